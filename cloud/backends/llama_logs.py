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

# ggml_log_level (ggml.h): NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5 (continues the
# previous line). llama-cpp-python's own table still has the older order (INFO 1 ... DEBUG 4),
# which would print every INFO line of a model load as a warning.
_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
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

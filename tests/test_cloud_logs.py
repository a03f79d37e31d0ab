"""The cloud loads llama.cpp models without writing to stdout/stderr or swapping them: llama.cpp's
log lines go to the "relayllm.cloud.llama_cpp" logger at their own level (a load's INFO lines
stay quiet under the default WARNING level, and appear when an operator turns DEBUG on)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = """
import logging, sys
from relayllm.cloud.backends.llamacpp import LlamaCppBackend
if sys.argv[2] == "debug":
    logging.basicConfig(level=logging.DEBUG, stream=sys.stdout, format="%(name)s %(levelname)s %(message)s")
LlamaCppBackend(sys.argv[1])
print("loaded")
"""


def test_a_model_load_is_quiet_and_its_lines_reach_the_logger(smollm2_path):
    quiet = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_path), "default"],
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert quiet.stdout.strip() == "loaded" and quiet.stderr == ""
    loud = subprocess.run([sys.executable, "-c", SCRIPT, str(smollm2_path), "debug"],
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr[-2000:]
    lines = [x for x in loud.stdout.splitlines() if x.startswith("relayllm.cloud.llama_cpp ")]
    assert any(" INFO llama_model_loader: " in x for x in lines), loud.stdout[-2000:]

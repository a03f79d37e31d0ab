"""The desktop example (edge/desktop.py) under Xvfb, against a real cloud: it streams an
answer with cloud spans and saves a screenshot (RELAYLLM_UPDATE_SCREENSHOT=1 copies it to docs/desktop.png)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge_parts import counting_cloud


def test_desktop_example_streams_and_saves_a_screenshot(smollm2_path, tmp_path):
    pytest.importorskip("tkinter")
    if not shutil.which("xvfb-run") or not shutil.which("import"):
        pytest.skip("needs xvfb-run and ImageMagick's import (apt-get install xvfb imagemagick)")
    server, backend = counting_cloud(smollm2_path, n_ctx=1024)
    shot = tmp_path / "desktop.png"
    with server:
        proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 900x500x24", sys.executable, "-m",
                               "relayllm.edge.desktop", "--model", str(smollm2_path), "--cloud", server.target,
                               "--prompt", "Tell me about the sea.", "--screenshot", str(shot)],
                              capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 2000
    assert backend.generations > 0  # the cloud wrote part of the answer shown
    if os.environ.get("RELAYLLM_UPDATE_SCREENSHOT"):  # refresh the README's picture on purpose only
        shutil.copy(shot, Path(__file__).resolve().parents[1] / "docs" / "desktop.png")

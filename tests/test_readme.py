"""The README's commands run as shown.

Every `relayllm ...` line in a README code block must parse with the real dispatcher (the
subcommand exists, every flag exists and takes what is given); the short ones that need no
server are run for real; every Python block compiles and the names it imports exist; the
README links only to files in this repository.
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from relayllm.protos.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w*)\n(.*?)^```", README, flags=re.S | re.M)


def _command_lines() -> list[str]:
    lines = []
    for lang, body in BLOCKS:
        if lang not in ("", "bash", "sh"):
            continue
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            line = re.sub(r"^(?:[A-Z_]+=\S+\s+)+", "", line)  # leading VAR=value settings
            if line.startswith("relayllm "):
                lines.append(line)
    return lines


COMMANDS = _command_lines()


def test_the_readme_has_commands_to_check():
    assert len(COMMANDS) >= 8, COMMANDS
    assert "bash .ci/setup && .venv/bin/relayllm demo" in README
    assert "bash .ci/setup && .venv/bin/python -m pytest -q -p no:cacheprovider" in README


@pytest.mark.parametrize("line", COMMANDS)
def test_every_readme_command_parses(line):
    argv = shlex.split(line)[1:]
    parser, modules = build_parser(argv)
    args = parser.parse_args(argv)  # argparse exits (SystemExit) on an unknown flag or subcommand
    assert args.command == argv[0]
    assert modules[argv[0]] is not None, f"`relayllm {argv[0]}` is unavailable"


def test_the_short_readme_commands_run(smollm2_path):
    """The ones that need no server and no model build: run them as a user would."""
    short = [c for c in COMMANDS if c.startswith("relayllm generate ") and "--cloud" not in c]
    assert short
    for line in short:
        proc = subprocess.run([sys.executable, "-m", "relayllm.protos.cli", *shlex.split(line)[1:]],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (line, proc.stderr[-2000:])
        assert proc.stdout.strip(), line
    proc = subprocess.run([sys.executable, "-m", "relayllm.protos.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "generate" in proc.stdout and "serve" in proc.stdout


def test_python_blocks_compile_and_import_what_exists():
    blocks = [body for lang, body in BLOCKS if lang == "python"]
    assert blocks
    for body in blocks:
        tree = ast.parse(body)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                module = importlib.import_module(node.module)
                for alias in node.names:
                    assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"


def test_links_stay_inside_the_repository():
    for target in re.findall(r"\]\(([^)]+)\)", README):
        assert not target.startswith(("http:", "https:", "../", "/")), target
        assert (ROOT / target.split("#")[0]).exists(), f"README links to a missing file: {target}"
    assert "../shared" not in README

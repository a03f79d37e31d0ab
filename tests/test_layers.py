"""The house: protos/ is the contract; edge/ and cloud/ depend on it and never on each other;
no part imports another part's CLI; every file stays one concept (about 400 lines at most).

Read from the source with `ast`, so a lazy import inside a function counts as much as one at
the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("protos", "edge", "cloud", "training")
# what each part may import from relayllm (besides itself)
ALLOWED = {
    "protos": set(),
    "edge": {"protos"},
    "cloud": {"protos"},
    "training": {"protos", "edge", "cloud"},
}
GENERATED = {"relay_pb2.py", "relay_pb2_grpc.py", "relay_pb2.pyi"}
MAX_LINES = 400


def _sources(part: str):
    return sorted(p for p in (ROOT / part).rglob("*.py") if p.name not in GENERATED)


def _relayllm_imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("relayllm")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("relayllm"):
            found.append((node.lineno, node.module))
            # `from relayllm.edge import cli` imports a CLI module too
            found += [(node.lineno, f"{node.module}.cli") for a in node.names if a.name == "cli"]
    return found


def _import_violations(part: str, rel: str, imports) -> list[str]:
    bad = []
    for line, name in imports:
        bits = name.split(".")
        if len(bits) < 2 or bits[1] not in PARTS:
            continue
        other = bits[1]
        if other != part and other not in ALLOWED[part]:
            bad.append(f"{rel}:{line} imports {name} ({part}/ may not import {other}/)")
        if other != part and len(bits) > 2 and bits[2] == "cli" and rel != "protos/cli.py":
            bad.append(f"{rel}:{line} imports another part's CLI ({name})")
    return bad


def _bare_part_imports(path: Path) -> list[tuple[int, str]]:
    """Imports of a part by its folder name (`training.relay...`): they work from the repository
    root, where the tests run, and nowhere else (the package installs as relayllm.*)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = [(n.lineno, a.name) for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [(n.lineno, n.module) for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return [(line, name) for line, name in names if name.split(".")[0] in PARTS]


@pytest.mark.parametrize("part", PARTS)
def test_parts_import_each_other_through_the_package(part):
    bad = [f"{path.relative_to(ROOT).as_posix()}:{line} imports {name} (write relayllm.{name})"
           for path in _sources(part) for line, name in _bare_part_imports(path)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("part", PARTS)
def test_parts_import_only_what_the_layering_allows(part):
    bad = []
    for path in _sources(part):
        rel = path.relative_to(ROOT).as_posix()
        bad += _import_violations(part, rel, _relayllm_imports(path))
    assert not bad, "\n".join(bad)


def test_the_layering_check_itself_catches_a_violation():
    # an edge module that imports the cloud, lazily, and a training module that reaches into the edge CLI
    lazy = [(3, "relayllm.cloud.servicer")]
    assert _import_violations("edge", "edge/x.py", lazy)
    assert _import_violations("cloud", "cloud/x.py", [(1, "relayllm.edge")])
    assert _import_violations("cloud", "cloud/x.py", [(1, "relayllm.edge.client")])
    assert _import_violations("training", "training/x.py", [(1, "relayllm.edge.cli")])
    assert not _import_violations("training", "training/x.py", [(1, "relayllm.edge.client")])
    assert not _import_violations("edge", "edge/x.py", [(1, "relayllm.protos.grammar")])


@pytest.mark.parametrize("part", PARTS)
def test_no_file_is_over_about_400_lines(part):
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _sources(part)
            if (n := len(p.read_text().splitlines())) > MAX_LINES]
    assert not long, "one concept per file:\n" + "\n".join(long)

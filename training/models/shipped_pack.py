"""The built-in benchmark's models, shipped built: one archive in the repository, unpacked into
the model cache on first use instead of training them (about 10 minutes on 2 cores).

    python -m relayllm.training.models.shipped_pack build     # train them afresh and pack them
    python -m relayllm.training.models.shipped_pack pack ROOT # pack a cache folder built by default_models()
    python -m relayllm.training.models.shipped_pack check     # does the pack match today's recipes?

What is packed (training/models/shipped/default-models.tar.xz, about 5 MB: the tiny models'
GGUFs are 9 MB each but mostly the zero rows of the tokens the task never uses): the GGUFs the
edge and the cloud run (LLM, SLM, relay SLM after warm-up and after GRPO), the two token
routers, the GRPO curves and the cache's manifest. Not packed: the HF checkpoints (only a
rebuild reads them) and the f16 GGUFs. Beside it, default-models.json says which recipes it
was built with (the pair's recipe hash, the relay recipe hash, the router recipe), the
archive's sha256, when, where, on which commit and in how long.

The pack is used only when all three recipes are today's and the archive is the one its
manifest names; otherwise default_models() builds as before. A cache unpacked from the pack
has no HF checkpoints, so when a recipe changes later the whole folder is built afresh
(training/models/defaults.py). tests/test_defaults.py fails when a recipe changes and the pack
is not rebuilt with it.

Not here: how the models are trained (tiny_models.py, default_relay.py, defaults.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "shipped"
ARCHIVE = SHIPPED / "default-models.tar.xz"
MANIFEST = SHIPPED / "default-models.json"
SEED = 0  # the pack holds the default seed's models
# manifest keys of the cache that name a file the pack carries (the rest are HF folders)
FILE_KEYS = ("llm", "slm", "relay_slm", "relay_warmup_slm", "relay_grpo_curves", "r2r_router", "citer_router")
HF_KEYS = ("llm_hf", "slm_hf", "relay_slm_hf")
REBUILD = "python -m relayllm.training.models.shipped_pack build"


def todays_recipes(seed: int = SEED) -> dict:
    """Every recipe that decides the packed models, as default_models() checks them."""
    from relayllm.training.models.default_relay import relay_recipe_hash
    from relayllm.training.models.defaults import ROUTER_RECIPE, recipe_hash

    return {"pair": recipe_hash(seed), "relay": relay_recipe_hash(), "routers": asdict(ROUTER_RECIPE)}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def problems(seed: int = SEED) -> list[str]:
    """Why the pack cannot stand in for a build with today's recipes (empty: it can)."""
    if not MANIFEST.is_file() or not ARCHIVE.is_file():
        return [f"no pack in {SHIPPED}"]
    meta = json.loads(MANIFEST.read_text(encoding="utf-8"))
    out = [f"the {name} recipe changed since the pack was built: rebuild it ({REBUILD})"
           for name, recipe in todays_recipes(seed).items() if meta.get("recipes", {}).get(name) != recipe]
    if meta.get("archive_sha256") != sha256_of(ARCHIVE):
        out.append(f"{ARCHIVE.name} is not the archive {MANIFEST.name} names")
    return out


def unpack_into(root: Path) -> dict:
    """Unpack the archive into the cache folder `root` (its manifest.json last, so a cut
    unpack leaves no manifest and the next call starts again); returns the manifest."""
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".unpack-") as tmp:
        with tarfile.open(ARCHIVE, "r:xz") as tar:
            try:
                tar.extractall(tmp, filter="data")  # no links or paths out of tmp
            except TypeError:  # a Python without extraction filters (3.10 before 3.10.12)
                tar.extractall(tmp)
        manifest = json.loads((Path(tmp) / "manifest.json").read_text(encoding="utf-8"))
        for key in FILE_KEYS:
            if manifest.get(key):
                dest = root / manifest[key]
                dest.parent.mkdir(parents=True, exist_ok=True)
                (Path(tmp) / manifest[key]).replace(dest)
        (Path(tmp) / "manifest.json").replace(root / "manifest.json")
    return manifest


def pack(root: str | Path) -> dict:
    """Write the archive and its manifest from a cache folder that default_models() built."""
    from relayllm.training.eval.machine import git_commit, machine_info

    root = Path(root)
    if not (root / "manifest.json").is_file():
        raise SystemExit(f"error: no models in {root} (no manifest.json): give a folder default_models() built")
    data = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
    missing = [key for key in FILE_KEYS if not data.get(key) or not (root / data[key]).is_file()]
    if missing:
        raise SystemExit(f"error: {root} lacks {', '.join(missing)}: build every model first ({REBUILD})")
    info = data.get("info", {})
    stage_s = {k: info.get(k) for k in ("pair_build_s", "relay_warmup_s", "relay_grpo_s", "relay_build_s")}
    stage_s["routers_s"] = info.get("routers", {}).get("build_s")
    build_s = None  # the build's own time: the sum of its stages (pair, relay, routers) as it timed them
    if None not in (stage_s["pair_build_s"], stage_s["relay_build_s"], stage_s["routers_s"]):
        build_s = stage_s["pair_build_s"] + stage_s["relay_build_s"] + stage_s["routers_s"]
    if info.get("recipe") != todays_recipes()["pair"] or info.get("relay_recipe") != todays_recipes()["relay"]:
        raise SystemExit(f"error: {root} was built with other recipes than today's ({REBUILD})")
    packed = {**data, **{key: None for key in HF_KEYS}}
    packed["info"] = {**info, "from_pack": True}
    SHIPPED.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "manifest.json").write_text(json.dumps(packed, indent=1), encoding="utf-8")
        part = ARCHIVE.with_name(ARCHIVE.name + ".part")  # the old archive stays until the new one is whole
        with tarfile.open(part, "w:xz") as tar:
            tar.add(Path(tmp) / "manifest.json", arcname="manifest.json")
            for key in FILE_KEYS:
                tar.add(root / data[key], arcname=data[key])
        part.replace(ARCHIVE)
    meta = {
        "what": "the built-in benchmark's models (training/models/defaults.py), built and packed",
        "recipes": todays_recipes(), "seed": SEED, "archive": ARCHIVE.name,
        "archive_sha256": sha256_of(ARCHIVE), "archive_bytes": ARCHIVE.stat().st_size,
        "files": {key: data[key] for key in FILE_KEYS},
        "accuracy_on_test": {"llm_gguf": info.get("llm", {}).get("gguf_test_accuracy"),
                             "slm_gguf": info.get("slm", {}).get("gguf_test_accuracy")},
        "build_s": build_s, "stage_s": stage_s, "packed_at_commit": git_commit(),
        "packed_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(), "rebuild": REBUILD,
    }
    MANIFEST.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return meta


def build() -> dict:
    """Train every default model (the pack unused) into the model cache, then pack them. A
    cache folder that already holds a build of today's recipes is packed as it is; one that
    was unpacked from the pack is trained afresh."""
    from relayllm.edge.models import cache_dir
    from relayllm.training.models import defaults

    manifest = cache_dir() / "default-models" / defaults.recipe_hash(SEED) / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8")).get("info", {}).get("from_pack"):
        manifest.unlink()  # the folder is rebuilt in place (defaults.py overwrites every file)
    models = defaults.default_models(progress=True, seed=SEED, use_pack=False)
    return pack(models.root)  # the build time is the sum of the stages' own times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m relayllm.training.models.shipped_pack",
                                     description="Check, pack or rebuild the built-in benchmark's shipped models.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="train the default models afresh (about 10 minutes on 2 cores) and pack them")
    p = sub.add_parser("pack", help="pack a cache folder that default_models() built with today's recipes")
    p.add_argument("root", help="e.g. ~/.cache/relayllm/default-models/<recipe hash>")
    sub.add_parser("check", help="say whether the pack matches today's recipes")
    args = parser.parse_args(argv)
    if args.command == "check":
        found = problems()
        print("\n".join(found) if found else f"{ARCHIVE.name} matches today's recipes")
        return 1 if found else 0
    meta = build() if args.command == "build" else pack(Path(args.root).expanduser())
    print(f"wrote {ARCHIVE} ({meta['archive_bytes'] / 1e6:.1f} MB) and {MANIFEST.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

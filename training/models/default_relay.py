"""The default relay SLM: warm-up then GRPO on the default pair, built on first use and cached.

`build_relay(root, ...)` is called by training/models/defaults.py once the pair is in
`root`; it writes root/relay/ (warm-up and GRPO checkpoints, both GGUFs, the GRPO curves)
and records them in the manifest. The relay recipe (RELAY_RECIPE plus every default of the
warm-up and GRPO configs it runs with) is hashed into the manifest: when any of it changes,
the relay SLM is rebuilt and nothing else (the pair and the routers stay).

The recipe (chosen on a validation set of 200 questions disjoint from train and test; the
figures are in docs/relay-protocol.md, "What was measured while choosing"):
- command_context "drop": the tiny SLM finds digits by position; a command kept in its
  context shifts them (warm-up with commands kept: 33.5 % at 1.2 % LLM tokens; dropped:
  68.5 % at 1.0 %; docs/relay-protocol.md);
- warm-up: guided, N = the LLM span that brings the SLM back onto the LLM's path;
- GRPO: rollouts with real LLM calls on the same protocol, the table reward, 30 steps at
  lr 5e-5 (at 2e-4 the reward fell and the KL rose after ~15 steps, and validation accuracy
  dropped below the warm-up's: 69.0 % vs 72.0 % without calibration; at 5e-5: 76.5 % at 1.6 %
  LLM tokens vs the warm-up's 72.0 % at 1.1 %, the first 200 validation questions).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class RelayRecipe:
    command_context: str = "drop"
    warmup: dict = field(default_factory=lambda: {"clean_context": True})
    grpo: dict = field(default_factory=lambda: {"command_context": "drop", "steps": 30, "lr": 5e-5})
    grpo_on: bool = True  # False: the warm-up's SLM is the relay SLM


RELAY_RECIPE = RelayRecipe()
CURVES_FILE = "grpo-curves.png"


def _configs(recipe: RelayRecipe):
    from relayllm.training.relay.config import GrpoConfig, WarmupConfig

    return WarmupConfig(**recipe.warmup), GrpoConfig(**recipe.grpo)


def relay_recipe_hash(recipe: RelayRecipe | None = None) -> str:
    """Every setting that shapes the relay SLM: the recipe and the full stage configs."""
    recipe = recipe or RELAY_RECIPE
    warmup, grpo = _configs(recipe)
    blob = {"recipe": asdict(recipe), "warmup": asdict(warmup), "grpo": asdict(grpo) if recipe.grpo_on else None}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


def relay_missing(data: dict, root: Path) -> bool:
    """Whether the manifest `data` lacks a relay SLM built with today's recipe."""
    info = data.get("info", {})
    if info.get("relay_recipe") != relay_recipe_hash():
        return True
    if info.get("relay_error"):
        return False  # tried with this recipe and failed: the error is in the manifest, not retried each call
    return not (data.get("relay_slm") and (root / data["relay_slm"]).is_file())


def _say(msg: str) -> None:
    print(f"[default models] {msg}", file=sys.stderr, flush=True)


def build_relay(root: Path, manifest: dict, seed: int, progress: bool, quant: str) -> dict:
    """Warm-up, then GRPO; both exported to GGUF. Returns the manifest with the relay entries
    (or `info.relay_error` when a stage failed: the pair stays usable)."""
    from relayllm.training.models import export
    from relayllm.training.relay.grpo import run_grpo
    from relayllm.training.relay.warmup import run_warmup

    recipe = RELAY_RECIPE
    warmup_cfg, grpo_cfg = _configs(recipe)
    info = manifest.setdefault("info", {})
    for key in ("relay_slm", "relay_slm_hf", "relay_warmup_slm"):
        manifest[key] = None
    info.pop("relay_error", None)
    info["relay_recipe"] = relay_recipe_hash(recipe)
    info["relay_command_context"] = recipe.command_context
    relay = root / "relay"
    stamp = relay / "recipe.txt"  # an interrupted build of this recipe resumes; another recipe starts over
    if relay.is_dir() and (not stamp.is_file() or stamp.read_text().strip() != info["relay_recipe"]):
        import shutil

        shutil.rmtree(relay)
    relay.mkdir(parents=True, exist_ok=True)
    stamp.write_text(info["relay_recipe"])
    stages = ["warm-up"] + (["GRPO"] if recipe.grpo_on else [])
    _say(f"teaching the SLM to relay ({' + '.join(stages)}, command_context={recipe.command_context})")
    started = time.perf_counter()
    try:
        warm_dir = Path(run_warmup(slm=root / "slm", llm=root / "llm", out_dir=relay / "warmup", config=warmup_cfg,
                                   seed=seed, progress=progress))
        warm_gguf = export.export(warm_dir, relay, name="relay-warmup", quants=(quant,))[quant]
        manifest["relay_warmup_slm"] = str(warm_gguf.relative_to(root))
        info["relay_warmup_s"] = time.perf_counter() - started
        final_dir, final_gguf = warm_dir, warm_gguf
        if recipe.grpo_on:
            t0 = time.perf_counter()
            final_dir = Path(run_grpo(slm=warm_dir, llm=root / "llm", out_dir=relay / "grpo", config=grpo_cfg,
                                      seed=seed, progress=progress))
            final_gguf = export.export(final_dir, relay, name="relay-slm", quants=(quant,))[quant]
            info["relay_grpo_s"] = time.perf_counter() - t0
            plot_grpo_curves(final_dir / "metrics.jsonl", relay / CURVES_FILE)
            manifest["relay_grpo_curves"] = str((relay / CURVES_FILE).relative_to(root))
    except Exception as exc:  # the base pair stays usable; the error is kept and shown
        info["relay_error"] = f"{type(exc).__name__}: {exc}"
        _say(f"relay SLM not built: {info['relay_error']}")
        return manifest
    manifest["relay_slm"] = str(final_gguf.relative_to(root))
    manifest["relay_slm_hf"] = str(final_dir.relative_to(root))
    info["relay_build_s"] = time.perf_counter() - started
    info["relay_stages"] = stages
    _say(f"relay SLM ready in {info['relay_build_s']:.0f} s")
    return manifest


def plot_grpo_curves(metrics: Path, out: Path) -> Path | None:
    """Reward, accuracy, calls per sample, LLM token ratio and KL per GRPO step (one PNG)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("reward", "reward"), ("relay/accuracy", "accuracy"), ("relay/calls_per_sample", "calls / sample"),
            ("relay/llm_token_ratio", "LLM token ratio"), ("kl", "KL")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8))
    steps = [r["step"] for r in rows]
    for ax, (key, title) in zip(axes, keys):
        values = [float(r.get(key, float("nan"))) for r in rows]
        ax.plot(steps, values, lw=1, alpha=0.5)
        k = max(1, len(values) // 8)  # a moving average: one step is one prompt group, noisy
        smooth = [sum(values[max(0, i - k + 1): i + 1]) / len(values[max(0, i - k + 1): i + 1]) for i in range(len(values))]
        ax.plot(steps, smooth, lw=2)
        ax.set_title(title)
        ax.set_xlabel("GRPO step")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out

"""`relayllm train warmup|grpo|export|all --config FILE.toml|.json [overrides]`.

The config (training/relay/config.py: one dataclass per stage, `--show-config` prints every
key with its default and help; its module doc shows an example) names the models (HF
folders or GGUF files; the LLM may be a running cloud, grpc://HOST:PORT), the data (a JSONL
of questions and answers, or the built-in task) and the output folder.

Each stage reads the previous stage's output when it is there (grpo: out/warmup; export:
out/grpo, else out/warmup), else `slm`. Interrupted runs resume from their last checkpoint;
`--restart` starts over. Overrides: --slm/--llm/--out/--data/--seed, and `--set grpo.steps=5`
(value as JSON, else a string). Nothing heavy is imported until run().
"""

from __future__ import annotations

HELP = "warm-up, GRPO and GGUF export of a relay SLM"

import argparse
import json
from pathlib import Path

from relayllm.protos.protocol import COMMAND_CONTEXT_KEY
from relayllm.training.errors import TrainingError
from relayllm.training.relay.config import OWN_STRATEGIES, STAGES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", nargs="?", choices=(*STAGES, "all"),
                        help="which stage to run (all: warm-up, GRPO, export)")
    parser.add_argument("--config", type=Path, help="TOML or JSON config file")
    parser.add_argument("--slm", help="the SLM to train (HF checkpoint folder or GGUF file)")
    parser.add_argument("--llm", help="the helper LLM: HF folder, GGUF file, or grpc://HOST:PORT (GRPO only)")
    parser.add_argument("--data", help="JSONL of questions and answers (default: the built-in task)")
    parser.add_argument("--out", type=Path, help="output folder (stage subfolders go under it)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set grpo.steps=5 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed for every stage")
    parser.add_argument("--restart", action="store_true", help="ignore earlier checkpoints and start over")
    parser.add_argument("--budget-minutes", type=float, metavar="M",
                        help="GRPO: stop with a checkpoint after the first step past M minutes; run again to go on")
    parser.add_argument("--show-config", action="store_true", help="print every config key with its default and help")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def apply_overrides(config: dict, args) -> dict:
    """The config file's dict with the command line's overrides applied."""
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for key in ("slm", "llm", "out", "data", "seed"):
        if getattr(args, key, None) is not None:
            config[key] = str(getattr(args, key)) if key != "seed" else args.seed
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise TrainingError(f"--set wants SECTION.KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        section, dot, name = key.partition(".")
        if dot:
            if section not in STAGES:
                raise TrainingError(f"--set {item!r}: unknown section {section!r} (one of {', '.join(STAGES)})")
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    return config


def _model(value, what: str, *, cloud_ok: bool = False) -> str:
    """A model path the stages can load: an HF checkpoint folder or a GGUF file (or a cloud)."""
    if not value:
        raise TrainingError(f"no {what} given (config key or --{what.split()[0]})")
    if cloud_ok and str(value).startswith("grpc://"):
        return str(value)
    path = Path(value)
    if not path.exists():
        from relayllm.protos import registry

        if str(value) in registry.MODELS:  # a registry name: pulled on first use
            return str(registry.resolve_model(str(value)))
    if path.is_file() and path.suffix == ".gguf":
        return str(path)
    if not (path / "config.json").is_file():
        raise TrainingError(f"{what} is neither an HF checkpoint folder (no config.json) nor a GGUF file: {path}")
    return str(path)


def trained_command_context(src, cfg) -> str | None:
    """The command context the checkpoint in `src` was trained for: a GRPO run's own, a
    warm-up's from its rows (clean_context: "drop"); None for any other folder."""
    if src is None:
        return None
    src = Path(src)
    for mark in ("grpo_done.json", "warmup_done.json"):
        if (src / mark).is_file():
            summary = json.loads((src / mark).read_text()).get("config", {})
            if mark.startswith("grpo"):
                return summary.get("command_context", cfg.grpo.command_context)
            return "drop" if summary.get("clean_context") else "keep"
    return None


def run(args) -> int:
    from relayllm.training.relay.config import describe, read_config_file, train_config_from_dict

    if args.show_config:
        print(describe())
        return 0
    if args.stage is None:
        raise TrainingError("give a stage: warmup, grpo, export or all")
    raw = apply_overrides(read_config_file(args.config), args)
    if not raw.get("out"):
        raise TrainingError("no output folder: give --out or `out` in the config")
    cfg = train_config_from_dict(raw)
    out = Path(cfg.out)
    stages = STAGES if args.stage == "all" else (args.stage,)
    common = {"progress": not args.no_progress, "resume": not args.restart, "seed": cfg.seed}

    questions = None
    if "warmup" in stages or "grpo" in stages:
        from relayllm.training.data.benchmark import QuestionSet

        questions = QuestionSet.from_config(cfg.data, cfg.instruction, cfg.chat)
    if "warmup" in stages:
        from relayllm.training.relay.warmup import DONE_MARK, run_warmup

        slm = _model(cfg.warmup.input or cfg.slm, "slm checkpoint")
        llm = _model(cfg.llm, "llm checkpoint") if cfg.warmup.strategy in ("guided", *OWN_STRATEGIES) else None
        done = run_warmup(slm, llm, out / "warmup", cfg.warmup, questions=questions, **common)
        summary = json.loads((done / DONE_MARK).read_text())
        print(f"warm-up: {summary['examples']} examples, {summary['calls']} commands, {summary['steps']} steps, "
              f"loss {summary['loss_first']} -> {summary['loss_last']} -> {done}")
    if "grpo" in stages:
        from relayllm.training.relay.grpo import CUT_MARK, METRICS_FILE, run_grpo

        slm = cfg.grpo.input or (out / "warmup" if (out / "warmup" / "warmup_done.json").is_file() else cfg.slm)
        slm = _model(slm, "slm checkpoint")
        llm = _model(cfg.llm, "llm checkpoint", cloud_ok=True)
        done = run_grpo(slm, llm, out / "grpo", cfg.grpo, questions=questions,
                        budget_minutes=getattr(args, "budget_minutes", None), **common)
        for x in (json.loads(line) for line in (done / METRICS_FILE).read_text().splitlines()):
            print(f"grpo step {x['step']}: reward {x.get('reward', 0):.3f} accuracy {x.get('relay/accuracy', 0):.2f} "
                  f"calls/sample {x.get('relay/calls_per_sample', 0):.2f} "
                  f"llm token ratio {x.get('relay/llm_token_ratio', 0):.3f} kl {x.get('kl', 0):.4f}")
        if (done / CUT_MARK).is_file():
            cut = json.loads((done / CUT_MARK).read_text())
            print(f"grpo: cut by --budget-minutes at step {cut['step']} of {cut['steps']} (checkpoint in {done}); "
                  f"run the same command again to go on")
            return 0
        print(f"grpo: -> {done}")
    if "export" in stages:
        from relayllm.training.models import export

        src = cfg.export.input or next(
            (out / s for s in ("grpo", "warmup") if (out / s / f"{s}_done.json").is_file()), None)
        context = trained_command_context(src, cfg)
        src = _model(src, "export input checkpoint")
        try:
            paths = export.export(src, out / "gguf", name=cfg.export.name, quants=cfg.export.quants,
                                  metadata={COMMAND_CONTEXT_KEY: context} if context else None)
        except export.ExportError as exc:
            raise TrainingError(str(exc)) from None
        for kind, path in paths.items():
            print(f"export {kind}: {path}")
        if context:
            print(f"export: command context {context!r} recorded in the GGUF ({COMMAND_CONTEXT_KEY})")
    return 0

"""`relayllm train warmup|grpo|export|all --config FILE.json|.toml [overrides]`.

The config names the models and the output folder, with one optional section per stage
whose keys are the keyword arguments of run_warmup / run_grpo / export.export:

    slm = "path/to/slm-hf"          # HF checkpoint folder
    llm = "path/to/llm-hf"          # or "grpc://127.0.0.1:50051" for the cloud service (GRPO)
    out = "runs/relay"              # warmup/, grpo/, gguf/ go under it
    [warmup]
    strategy = "guided"
    steps = 80
    [grpo]
    steps = 20
    reward = "table"
    [export]
    quants = ["q8_0"]

Each stage reads the previous stage's output when it is there (grpo: out/warmup; export:
out/grpo, else out/warmup), else `slm`. Interrupted runs resume from their last checkpoint;
`--restart` starts over. Overrides: --slm/--llm/--out, and `--set grpo.steps=5` (value as
JSON, else a string). Nothing heavy is imported until run().
"""

from __future__ import annotations

HELP = "warm-up, GRPO and GGUF export of a relay SLM"

import argparse
import inspect
import json
from pathlib import Path

STAGES = ("warmup", "grpo", "export")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=(*STAGES, "all"), help="which stage to run (all: warm-up, GRPO, export)")
    parser.add_argument("--config", type=Path, help="JSON or TOML config file")
    parser.add_argument("--slm", help="the SLM to train (HF checkpoint folder)")
    parser.add_argument("--llm", help="the helper LLM: HF checkpoint folder, or grpc://HOST:PORT (GRPO only)")
    parser.add_argument("--out", type=Path, help="output folder (stage subfolders go under it)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value, e.g. --set grpo.steps=5 (repeatable)")
    parser.add_argument("--seed", type=int, help="seed for every stage")
    parser.add_argument("--restart", action="store_true", help="ignore earlier checkpoints and start over")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _error(msg: str):
    from relayllm.training.errors import TrainingError

    return TrainingError(msg)


def load_config(path: Path | None) -> dict:
    """The config file as a dict (empty without a file); readable errors for bad files."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise _error(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # json and tomllib errors are ValueErrors
        raise _error(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise _error(f"config {path} must hold a table/object at the top")
    return data


def apply_overrides(config: dict, args) -> dict:
    config = {k: (dict(v) if isinstance(v, dict) else v) for k, v in config.items()}
    for key in ("slm", "llm", "out", "seed"):
        if getattr(args, key, None) is not None:
            config[key] = str(getattr(args, key)) if key != "seed" else args.seed
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep:
            raise _error(f"--set wants SECTION.KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        section, dot, name = key.partition(".")
        if dot:
            if section not in STAGES:
                raise _error(f"--set {item!r}: unknown section {section!r} (one of {', '.join(STAGES)})")
            config.setdefault(section, {})[name] = value
        else:
            config[key] = value
    return config


def _stage_kwargs(config: dict, stage: str, fn, reserved: set[str]) -> dict:
    """The section's keys, checked against the stage function's keyword arguments."""
    section = config.get(stage, {}) or {}
    if not isinstance(section, dict):
        raise _error(f"config section [{stage}] must be a table/object")
    allowed = {n for n, p in inspect.signature(fn).parameters.items() if p.kind is p.KEYWORD_ONLY} - reserved
    unknown = sorted(set(section) - allowed - {"input"})
    if unknown:
        raise _error(f"unknown key(s) in [{stage}]: {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return {k: v for k, v in section.items() if k != "input"}


def _need_dir(value, what: str) -> Path:
    if not value:
        raise _error(f"no {what} given (config key or --{what.split()[0]})")
    path = Path(value)
    if not (path / "config.json").is_file():
        raise _error(f"{what} is not an HF checkpoint folder (no config.json): {path}")
    return path


def run(args) -> int:
    config = apply_overrides(load_config(args.config), args)
    if not config.get("out"):
        raise _error("no output folder: give --out or `out` in the config")
    out = Path(config["out"])
    stages = STAGES if args.stage == "all" else (args.stage,)
    progress = not args.no_progress
    common = {"progress": progress, "resume": not args.restart}
    if config.get("seed") is not None:
        common["seed"] = int(config["seed"])

    try:
        if "warmup" in stages:
            from relayllm.training.relay.warmup import DONE_MARK, run_warmup

            kw = _stage_kwargs(config, "warmup", run_warmup, set(common))
            slm = _need_dir(config.get("warmup", {}).get("input") or config.get("slm"), "slm checkpoint")
            llm = _need_dir(config.get("llm"), "llm checkpoint")
            done = run_warmup(slm, llm, out / "warmup", **kw, **common)
            summary = json.loads((done / DONE_MARK).read_text())
            print(f"warm-up: {summary['examples']} examples, {summary['calls']} commands, {summary['steps']} steps, "
                  f"loss {summary['loss_first']} -> {summary['loss_last']} -> {done}")
        if "grpo" in stages:
            from relayllm.training.relay.grpo import METRICS_FILE, run_grpo

            kw = _stage_kwargs(config, "grpo", run_grpo, set(common))
            slm = config.get("grpo", {}).get("input") or (
                out / "warmup" if (out / "warmup" / "warmup_done.json").is_file() else config.get("slm"))
            slm = _need_dir(slm, "slm checkpoint")
            llm = config.get("llm")
            if not (isinstance(llm, str) and llm.startswith("grpc://")):
                llm = _need_dir(llm, "llm checkpoint")
            done = run_grpo(slm, llm, out / "grpo", **kw, **common)
            lines = [json.loads(x) for x in (done / METRICS_FILE).read_text().splitlines()]
            for x in lines:
                print(f"grpo step {x['step']}: reward {x.get('reward', 0):.3f} accuracy {x.get('relay/accuracy', 0):.2f} "
                      f"calls/sample {x.get('relay/calls_per_sample', 0):.2f} "
                      f"llm token ratio {x.get('relay/llm_token_ratio', 0):.3f} kl {x.get('kl', 0):.4f}")
            print(f"grpo: -> {done}")
        if "export" in stages:
            try:
                from relayllm.training.models import export
            except ImportError as exc:
                raise _error(f"export is not available: {exc}") from None
            section = dict(config.get("export", {}) or {})
            src = section.pop("input", None) or next(
                (out / s for s in ("grpo", "warmup") if (out / s / f"{s}_done.json").is_file()), None)
            src = _need_dir(src, "export input checkpoint")
            kw = _stage_kwargs({"export": section}, "export", export.export, set())
            paths = export.export(src, out / "gguf", **kw)
            for kind, path in paths.items():
                print(f"export {kind}: {path}")
    except Exception as exc:
        if type(exc).__name__ == "ExportError":
            raise _error(str(exc)) from None
        raise
    return 0

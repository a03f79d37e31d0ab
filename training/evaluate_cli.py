"""`relayllm eval`: one mode of the evaluation harness over a JSONL benchmark (or the built-in task).

Each run writes `<out>/<mode>.json` and re-renders `<out>/results.md` and the PNG plot from
every mode saved in that folder, so running the modes one after another into the same
folder builds the whole table.
"""

from __future__ import annotations

HELP = "evaluate slm / llm / relay / routers on a JSONL benchmark"

import argparse
import contextlib
import sys

from relayllm.training.errors import TrainingError

DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)
DEFAULT_QUERY_SHARES = (0.25, 0.5, 0.75)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from relayllm.training.evaluate import MODES  # light: no model library imported

    parser.add_argument("--mode", required=True, choices=MODES, help="what answers the questions")
    parser.add_argument("--data", metavar="FILE.jsonl",
                        help="benchmark with 'question' and 'answer' per line (default: the built-in task's held-out split)")
    parser.add_argument("--slm", metavar="GGUF", help="the SLM (default: the default models; relay mode: the relay SLM)")
    cloud = parser.add_mutually_exclusive_group()
    cloud.add_argument("--llm", metavar="GGUF", help="the LLM, served by a cloud started on loopback for this run")
    cloud.add_argument("--cloud", metavar="HOST:PORT", help="a running `relayllm serve`")
    parser.add_argument("--router", metavar="ONNX", help="r2r / citer modes: the trained router file")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        help="relay mode: call thresholds (the SLM calls when its P(<call>) reaches T; "
                             "default 0.1); confidence mode: top-probability thresholds; r2r / citer: p_llm thresholds "
                             f"(default {' '.join(map(str, DEFAULT_THRESHOLDS))})")
    parser.add_argument("--ratio", type=float, nargs="+", metavar="R",
                        help="random mode: shares p of LLM tokens (default: relay's ratio from <out>/relay.json); "
                             f"query mode: shares of questions (default {' '.join(map(str, DEFAULT_QUERY_SHARES))})")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    parser.add_argument("--grader", choices=("exact", "math"),
                        help="exact (built-in task) or math (math-verify: boxed / final number); "
                             "default: exact for the built-in task, math for --data")
    parser.add_argument("--max-tokens", type=int, default=256, help="response token budget per question (default 256)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random routers (default 0)")
    parser.add_argument("--out", default="runs/eval", metavar="DIR", help="results folder (default runs/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from relayllm.training import evaluate as E

    if args.limit is not None and args.limit < 1:
        raise TrainingError("--limit must be at least 1")
    for r in args.ratio or ():
        if not 0.0 <= r <= 1.0:
            raise TrainingError(f"--ratio values are shares in [0, 1], got {r}")
    for t in args.thresholds or ():
        if not 0.0 <= t <= 1.0:
            raise TrainingError(f"--thresholds are probabilities in [0, 1], got {t}")
    try:
        if args.data:
            examples = E.load_jsonl(args.data, args.limit)
            prompt = None
        else:
            examples = E.builtin_examples(args.limit)
            prompt = E.builtin_prompt()
        grader = E.make_grader(args.grader or ("math" if args.data else "exact"))

        needs_defaults = args.slm is None or (args.mode != "slm" and not (args.llm or args.cloud))
        defaults = None
        if needs_defaults:
            from relayllm.training.defaults import default_models

            defaults = default_models(progress=not args.no_progress)
        slm = args.slm or (defaults.relay_slm if args.mode == "relay" else defaults.slm)
        llm = args.llm or (defaults.llm if defaults is not None and not args.cloud else None)

        with contextlib.ExitStack() as stack:
            target = args.cloud
            if target is None and args.mode != "slm":
                target = stack.enter_context(E.local_cloud(llm))
            ev = stack.enter_context(E.Evaluator(cloud_target=target, grader=grader, prompt=prompt,
                                                 max_tokens=args.max_tokens, seed=args.seed,
                                                 progress=not args.no_progress))
            runs = _run_mode(E, ev, args, examples, slm)
    except E.EvalError as exc:
        raise TrainingError(str(exc)) from None

    meta = {"data": args.data or "built-in task (held-out split)", "slm": str(slm), "llm": str(llm or args.cloud),
            "n": len(examples), "seed": args.seed, "max_tokens": args.max_tokens}
    E.write_mode_json(args.out, args.mode, runs, meta)
    table, plot = E.write_report(args.out)
    print(E.text_table(runs), end="")
    print(f"\nwrote {args.out}/{args.mode}.json, {table}, {plot}", file=sys.stderr)
    return 0


def _saved_run(E, out, mode, examples):
    """A run of `mode` already saved in `out` for the same questions, or None."""
    for r in E.read_runs(out):
        if r.mode == mode and [x.question for x in r.records] == [x.question for x in examples]:
            return r
    return None


def _run_mode(E, ev, args, examples, slm):
    mode = args.mode
    if mode == "slm":
        return [ev.run_slm(examples, slm)]
    if mode == "llm":
        return [ev.run_llm(examples, slm)]
    if mode == "relay":
        return [ev.run_relay(examples, slm, t) for t in (args.thresholds or [E.DEFAULT_CALL_THRESHOLD])]
    if mode == "confidence":
        return [ev.run_confidence(examples, slm, t) for t in (args.thresholds or DEFAULT_THRESHOLDS)]
    if mode in E.LEARNED_ROUTER_MODES:
        if not args.router:
            raise E.EvalError(f"--mode {mode} needs --router FILE.onnx (a router trained by `relayllm train`)")
        return [ev.run_learned_router(examples, slm, args.router, t, mode)
                for t in (args.thresholds or DEFAULT_THRESHOLDS)]
    if mode == "random":
        ratios = args.ratio
        if not ratios:
            relay = _saved_run(E, args.out, "relay", examples)
            if relay is None:
                raise E.EvalError(f"random mode needs --ratio, or a relay run of the same questions in {args.out} "
                                  "(run --mode relay first) to match its LLM token ratio")
            ratios = [relay.llm_token_ratio]
        return [ev.run_random(examples, slm, p) for p in ratios]
    if mode == "query":
        slm_run = _saved_run(E, args.out, "slm", examples) or ev.run_slm(examples, slm)
        llm_run = _saved_run(E, args.out, "llm", examples) or ev.run_llm(examples, slm)
        return [ev.run_query(slm_run, llm_run, s) for s in (args.ratio or DEFAULT_QUERY_SHARES)]
    raise E.EvalError(f"unknown mode {mode!r}")

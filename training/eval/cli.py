"""`relayllm eval`: one mode of the evaluation harness over a JSONL benchmark (or the built-in task).

Each run writes `<out>/<mode>.json` and re-renders `<out>/results.md` and the PNG plot from
every mode saved in that folder, so running the modes one after another into the same
folder builds the whole table. With `--data`, an SLM whose GGUF has a chat template sees
each question through it, followed by `--instruction` (training/data/prompts.py); the
built-in task and plain-completion models keep their raw format.
"""

from __future__ import annotations

HELP = "evaluate slm / llm / relay / routers on a JSONL benchmark"

import argparse
import contextlib
import sys

from relayllm.protos.protocol import COMMAND_CONTEXTS
from relayllm.training.errors import TrainingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # light imports only: no model library is loaded to print --help
    from relayllm.training.data.prompts import DEFAULT_INSTRUCTION
    from relayllm.training.eval.modes import DEFAULT_QUERY_SHARES, DEFAULT_THRESHOLDS, MODES

    parser.add_argument("--mode", required=True, choices=MODES, help="what answers the questions")
    parser.add_argument("--data", metavar="FILE.jsonl",
                        help="benchmark with 'question' (or 'problem') and 'answer' per line, GSM8K's '#### n' "
                             "answers included (default: the built-in task's held-out split)")
    parser.add_argument("--slm", metavar="GGUF", help="the SLM (default: the default models; relay mode: the relay SLM)")
    cloud = parser.add_mutually_exclusive_group()
    cloud.add_argument("--llm", metavar="GGUF", help="the LLM, served by a cloud started on loopback for this run")
    cloud.add_argument("--cloud", metavar="HOST:PORT", help="a running `relayllm serve`")
    parser.add_argument("--router", metavar="ONNX", help="r2r / citer modes: the trained router file")
    parser.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                        help="relay mode: calibration thresholds (the SLM writes <call> where its P(<call>) reaches "
                             "T; default: none, its own choice alone); confidence mode: top-probability thresholds; r2r / citer: p_llm thresholds "
                             f"(default {' '.join(map(str, DEFAULT_THRESHOLDS))})")
    parser.add_argument("--command-context", choices=COMMAND_CONTEXTS, default=None,
                        help="relay mode: after a call the command stays in the SLM's context (keep, the paper's) "
                             "or leaves it (drop); default: what the default relay SLM was trained for, else keep "
                             "(docs/relay-protocol.md)")
    parser.add_argument("--ratio", type=float, nargs="+", metavar="R",
                        help="random mode: shares p of LLM tokens (default: relay's ratio from <out>/relay.json); "
                             f"query mode: shares of questions (default {' '.join(map(str, DEFAULT_QUERY_SHARES))})")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="the built-in task's split (default test; choose settings on validation)")
    parser.add_argument("--grader", choices=("exact", "math"),
                        help="exact (built-in task) or math (math-verify: boxed / final number); "
                             "default: exact for the built-in task, math for --data")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                        help="with --data: the line after each question in the chat turn (default: %(default)r; "
                             "'' for none)")
    parser.add_argument("--no-chat", action="store_true",
                        help="with --data: send the raw question even when the SLM has a chat template")
    parser.add_argument("--max-tokens", type=int, default=256, help="response token budget per question (default 256)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="the SLM's context size (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random routers (default 0)")
    parser.add_argument("--out", default="runs/eval", metavar="DIR", help="results folder (default runs/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check(args) -> None:
    if args.limit is not None and args.limit < 1:
        raise TrainingError("--limit must be at least 1")
    if args.max_tokens < 1:
        raise TrainingError("--max-tokens must be at least 1")
    for r in args.ratio or ():
        if not 0.0 <= r <= 1.0:
            raise TrainingError(f"--ratio values are shares in [0, 1], got {r}")
    for t in args.thresholds or ():
        if not 0.0 <= t <= 1.0:
            raise TrainingError(f"--thresholds are probabilities in [0, 1], got {t}")


def run(args: argparse.Namespace) -> int:
    from relayllm.training import eval as E
    from relayllm.training.data import task

    _check(args)
    if args.data:
        examples = E.load_jsonl(args.data, args.limit)
        prompt, instruction = None, (None if args.no_chat else args.instruction)
    else:
        examples = E.builtin_examples(args.limit, split=args.split)
        prompt, instruction = task.format_prompt, None
    grader = E.make_grader(args.grader or ("math" if args.data else "exact"))

    needs_defaults = args.slm is None or (args.mode != "slm" and not (args.llm or args.cloud))
    defaults = None
    if needs_defaults:
        from relayllm.training.models.defaults import default_models

        defaults = default_models(progress=not args.no_progress)
    slm = args.slm or (defaults.relay_slm if args.mode == "relay" else defaults.slm)
    llm = args.llm or (defaults.llm if defaults is not None and not args.cloud else None)

    with contextlib.ExitStack() as stack:
        target = args.cloud
        if target is None and args.mode != "slm":
            target = stack.enter_context(E.local_cloud(llm))
        ev = stack.enter_context(E.Evaluator(cloud_target=target, grader=grader, prompt=prompt,
                                             instruction=instruction, max_tokens=args.max_tokens, seed=args.seed,
                                             progress=not args.no_progress, n_ctx=args.n_ctx))
        runs = E.run_named_mode(ev, args.mode, examples, slm, out=args.out, thresholds=args.thresholds,
                                ratios=args.ratio, router=args.router,
                                command_context=args.command_context or (
                                    defaults.relay_command_context if defaults is not None and not args.slm else "keep"))

    meta = {"data": args.data or f"built-in task ({args.split} split)", "slm": str(slm), "llm": str(llm or args.cloud),
            "n": len(examples), "seed": args.seed, "max_tokens": args.max_tokens, "instruction": instruction}
    E.write_mode_json(args.out, args.mode, runs, meta)
    table, plot = E.write_report(args.out)
    print(E.text_table(runs), end="")
    for run_ in runs:
        for warning in run_.warnings():
            print(f"warning: {warning}", file=sys.stderr)
    print(f"\nwrote {args.out}/{args.mode}.json, {table}, {plot}", file=sys.stderr)
    return 0

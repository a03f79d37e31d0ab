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
from pathlib import Path

from relayllm.protos.protocol import COMMAND_CONTEXTS
from relayllm.training.errors import TrainingError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # light imports only: no model library is loaded to print --help
    from relayllm.training.data.prompts import DEFAULT_INSTRUCTION
    from relayllm.training.eval.modes import DEFAULT_QUERY_SHARES, DEFAULT_THRESHOLDS, MODES

    parser.add_argument("--mode", required=True, choices=(*MODES, "all"),
                        help="what answers the questions; all (with --suite): the whole table, settings chosen on "
                             "validation, reported on the development test (training/eval/suite.py)")
    parser.add_argument("--validation", type=int, metavar="N",
                        help="--mode all: validation questions (default: the whole subset, 150)")
    parser.add_argument("--data", metavar="FILE.jsonl",
                        help="benchmark with 'question' (or 'problem') and 'answer' per line, GSM8K's '#### n' "
                             "answers included (default: the built-in task's held-out split)")
    parser.add_argument("--suite", choices=("gsm8k",), default=None,
                        help="a shipped benchmark on the real pair: gsm8k = GSM8K subsets in the package "
                             "(training/data/gsm8k.py), the SLM qwen2.5-coder-0.5b-instruct and the LLM "
                             "qwen2.5-coder-1.5b-instruct from the model registry unless --slm / --llm say otherwise")
    parser.add_argument("--slm", metavar="GGUF|NAME",
                        help="the SLM: a GGUF path or a registry name (`relayllm models list`; default: the default "
                             "models; relay mode: the relay SLM)")
    cloud = parser.add_mutually_exclusive_group()
    cloud.add_argument("--llm", metavar="GGUF|NAME",
                       help="the LLM (a GGUF path or a registry name), served by a cloud started on loopback for this run")
    cloud.add_argument("--cloud", metavar="HOST:PORT", help="a running `relayllm serve`")
    parser.add_argument("--relay-slm", metavar="GGUF",
                        help="--mode all: a relay SLM for this pair (relayllm train): relay rows join the table")
    parser.add_argument("--citer-router", metavar="ONNX",
                        help="with --suite gsm8k --mode all: a CITER router for the pair (python -m "
                             "relayllm.training.routers.pair); adds the CITER row, its threshold chosen on validation")
    parser.add_argument("--r2r-router", metavar="ONNX",
                        help="with --suite gsm8k --mode all: an R2R router for the pair (python -m "
                             "relayllm.training.routers.pair --router r2r); adds the R2R row, likewise")
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
                             f"query mode (a random query split, no router): shares of questions (default {' '.join(map(str, DEFAULT_QUERY_SHARES))})")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N questions")
    parser.add_argument("--split", choices=("test", "validation", "dev-test", "pool"), default=None,
                        help="the built-in task's split (test | validation; default test), or with --suite gsm8k the "
                             "GSM8K subset (dev-test | validation | pool; default dev-test); choose settings on "
                             "validation")
    parser.add_argument("--grader", choices=("exact", "math"),
                        help="exact (built-in task) or math (math-verify: boxed / final number); "
                             "default: exact for the built-in task, math for --data")
    parser.add_argument("--instruction", default=DEFAULT_INSTRUCTION,
                        help="with --data: the line after each question in the chat turn (default: %(default)r; "
                             "'' for none)")
    parser.add_argument("--no-chat", action="store_true",
                        help="with --data: send the raw question even when the SLM has a chat template")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="response token budget per question (default 256; 400 with --suite gsm8k)")
    parser.add_argument("--budget-minutes", type=float, default=None, metavar="M",
                        help="stop between two questions after M minutes; records are kept under <out>/records and "
                             "the same command goes on where it stopped")
    parser.add_argument("--deadline-s", type=float, default=120.0, metavar="S",
                        help="per cloud call (default 120: the harness measures answers, not latency)")
    parser.add_argument("--n-ctx", type=int, default=2048, help="the SLM's context size (default 2048)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random routers (default 0)")
    parser.add_argument("--out", default="runs/eval", metavar="DIR", help="results folder (default runs/eval)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _check(args) -> None:
    if args.limit is not None and args.limit < 1:
        raise TrainingError("--limit must be at least 1")
    if args.mode == "all" and not args.suite:
        raise TrainingError("--mode all runs a whole table: give --suite gsm8k")
    if args.validation is not None and args.validation < 1:
        raise TrainingError("--validation must be at least 1")
    if args.suite and args.data:
        raise TrainingError("give --suite or --data, not both")
    for flag, mode, router in (("--citer-router", "citer", args.citer_router), ("--r2r-router", "r2r", args.r2r_router)):
        if router is None:
            continue
        if args.mode != "all":
            raise TrainingError(f"{flag} adds {mode.upper()} to the whole table: give --suite gsm8k --mode all "
                                f"(one mode alone: --mode {mode} --router ONNX)")
        if not Path(router).is_file():
            raise TrainingError(f"{flag}: no such file: {router}")
    if args.budget_minutes is not None and args.budget_minutes <= 0:
        raise TrainingError("--budget-minutes must be positive")
    gsm8k_splits, builtin_splits = ("dev-test", "validation", "pool"), ("test", "validation")
    if args.split is not None and args.split not in (gsm8k_splits if args.suite else builtin_splits):
        allowed = gsm8k_splits if args.suite else builtin_splits
        raise TrainingError(f"--split {args.split} is not a split of {'GSM8K' if args.suite else 'the built-in task'}: "
                            f"choose {', '.join(allowed)}")
    if args.max_tokens is None:
        args.max_tokens = 400 if args.suite else 256
    if args.max_tokens < 1:
        raise TrainingError("--max-tokens must be at least 1")
    for r in args.ratio or ():
        if not 0.0 <= r <= 1.0:
            raise TrainingError(f"--ratio values are shares in [0, 1], got {r}")
    for t in args.thresholds or ():
        if not 0.0 <= t <= 1.0:
            raise TrainingError(f"--thresholds are probabilities in [0, 1], got {t}")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from relayllm.training import eval as E
    from relayllm.training.eval.journal import Budget
    from relayllm.training.data import task

    from relayllm.protos import registry

    _check(args)
    if args.suite == "gsm8k":
        from relayllm.training.data import gsm8k

        args.split = args.split or "dev-test"
        data_name = f"GSM8K {args.split} (training/data/gsm8k/{args.split}.jsonl)"
        examples = gsm8k.load(args.split, args.limit)
        prompt, instruction = None, (None if args.no_chat else args.instruction)
        args.slm = args.slm or (None if args.mode == "relay" else registry.DEFAULT_SLM)
        if args.mode == "relay" and args.slm is None:
            raise TrainingError("relay on GSM8K needs a relay SLM trained for the pair: give --slm GGUF "
                                "(none ships yet: issue 'Relay training at real size')")
        if not args.cloud:
            args.llm = args.llm or registry.DEFAULT_LLM
    elif args.data:
        data_name = args.data
        examples = E.load_jsonl(args.data, args.limit)
        prompt, instruction = None, (None if args.no_chat else args.instruction)
    else:
        args.split = args.split or "test"
        data_name = f"built-in task ({args.split} split)"
        examples = E.builtin_examples(args.limit, split=args.split)
        prompt, instruction = task.format_prompt, None
    grader = E.make_grader(args.grader or ("math" if (args.data or args.suite) else "exact"))
    # a registry name wherever a path goes: pulled on first use
    if args.slm:
        args.slm = str(registry.resolve_model(args.slm, progress=not args.no_progress))
    if args.llm:
        args.llm = str(registry.resolve_model(args.llm, progress=not args.no_progress))

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
        journal_key = {"data": data_name, "llm": Path(str(llm or args.cloud)).name, "n_ctx": args.n_ctx}
        ev = stack.enter_context(E.Evaluator(cloud_target=target, grader=grader, prompt=prompt,
                                             instruction=instruction, max_tokens=args.max_tokens, seed=args.seed,
                                             progress=not args.no_progress, n_ctx=args.n_ctx,
                                             journal_dir=Path(args.out) / "records", journal_key=journal_key,
                                             journal_files={"llm": llm} if llm else None,
                                             budget=Budget(args.budget_minutes), deadline_s=args.deadline_s))
        if args.mode == "all":
            from relayllm.training.data import gsm8k
            from relayllm.training.eval import suite

            relay_slm = str(registry.resolve_model(args.relay_slm)) if args.relay_slm else None

            summary = suite.run_table(ev, val_ex=gsm8k.load("validation", args.validation), test_ex=examples,
                                      slm=slm, out=args.out, thresholds=args.thresholds or suite.THRESHOLDS,
                                      say=lambda m: print(f"[eval] {m}", file=sys.stderr, flush=True),
                                      relay_slm=relay_slm, relay_context=args.command_context,
                                      routers={"citer": args.citer_router, "r2r": args.r2r_router})
            print((Path(args.out) / E.TABLE_FILE).read_text())
            print(f"evaluation {summary['eval_s'] / 60:.1f} min; wrote {args.out}/", file=sys.stderr)
            return 0
        runs = E.run_named_mode(ev, args.mode, examples, slm, out=args.out, thresholds=args.thresholds,
                                ratios=args.ratio, router=args.router,
                                command_context=args.command_context or (
                                    defaults.relay_command_context if defaults is not None and not args.slm else None))

    meta = {"data": data_name, "slm": str(slm), "llm": str(llm or args.cloud),
            "n": len(examples), "seed": args.seed, "max_tokens": args.max_tokens, "instruction": instruction}
    E.write_mode_json(args.out, args.mode, runs, meta)
    table, plot = E.write_report(args.out)
    print(E.text_table(runs), end="")
    for run_ in runs:
        for warning in run_.warnings():
            print(f"warning: {warning}", file=sys.stderr)
    print(f"\nwrote {args.out}/{args.mode}.json, {table}, {plot}", file=sys.stderr)
    return 0

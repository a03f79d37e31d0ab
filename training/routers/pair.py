"""CITER and R2R for the real pair: token routers for the 0.5B on the device, labels from the 1.5B.

    python -m relayllm.training.routers.pair --out runs/citer-pair [--questions 64]
    python -m relayllm.training.routers.pair --router r2r --out runs/r2r-pair [--questions 64]

The built-in pair's routers (training/models/defaults.py) label with both models in torch
and teacher-force along the task's reference solutions. Neither carries over to the real
pair on 2 CPU cores: the 1.5B in torch is 6 GB of float32 writing a few tokens a second, and
GSM8K's reference solutions are in another style ("48/2 = <<48/2=24>>24"), so teacher-forced
along them both models would be off the reference almost everywhere: CITER's case 3, a
rollout to the end (~10 s here) at nearly every position. So CITER's shortcut runs with the
1.5B's own right answer as the reference:

1. the 1.5B answers each pool question greedily (llama.cpp, its GGUF; training/relay/llm_paths.py,
   appended to a cache one question at a time, so a cut build resumes); only answers that
   math-verify grades right are kept as references;
2. the 0.5B reads each reference teacher-forced (torch, its GGUF dequantized, without command
   tokens: the model exactly as the edge runs it): the edge's router features at every
   position (top-k probabilities, entropy, last hidden state) and its greedy token;
3. labels by CITER's shortcut: where the 0.5B's token is the reference's, case 1 (SLM); where
   it differs, the 1.5B's token is the reference (its greedy token along its own greedy path),
   case 2 (LLM). Case 3 cannot arise. `--labels decisive` departs from it: a difference of
   wording ("To find" / "To determine") is labelled SLM, and only one on a digit or an
   arithmetic operator LLM (most differences between these two models are wording); on 64
   questions that left too few positives to learn from, so the default is CITER's own
   (PairRouterRecipe.labels says what was measured).
4. RouterNet (training/routers/features.py) without the candidate token's embedding: with
   the 151,936 x 896 table inside, the ONNX file would be 270 MB; without it, under 1 MB.
   Class-balanced BCE; precision, recall and the share fired on held-out questions.

R2R (`--router r2r`) runs steps 1, 2 and 4 alike; its labels (step 3) keep only the
departures that change the outcome: the 1.5B writes on from the 0.5B's token, and a branch
that ends wrong makes the position the LLM's (training/routers/pair_r2r.py; the branches
are cached and resumable too).

The router is written to <out>/citer.onnx (or r2r.onnx) with report.json; `relayllm eval
--suite gsm8k --mode all --citer-router <out>/citer.onnx --r2r-router <out>/r2r.onnx` puts
them in the pair's table (each threshold chosen on validation).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DECISIVE = set("0123456789+-*/%\u00d7\u00f7")  # a token holding one of these is a step of the arithmetic
ROUTERS = ("citer", "r2r")
THRESHOLDS = (0.5, 0.7, 0.9)  # reported on held-out questions; the suite sweeps its own (suite.ROUTER_THRESHOLDS)


@dataclass(frozen=True)
class PairRouterRecipe:
    questions: int = 64          # the first pool questions (the relay warm-up's 64)
    max_new_tokens: int = 400    # the evaluation's GSM8K budget
    top_k: int = 8
    hidden: int = 64
    epochs: int = 40
    held_out: float = 0.25       # share of questions held out for precision / recall
    seed: int = 0
    # where the 0.5B departs from the reference: "any" labels every departure LLM, CITER's own
    # shortcut; "decisive" only a departure on a digit or an operator. Chosen on the held-out
    # pool questions (64 questions, 28 references): "decisive" left 29 positives and its router
    # found none of the 8 held out (recall 0 at 0.5 / 0.7 / 0.9); "any" 423 positives, held out
    # precision 35-38% and recall 36-43% at 5-6% of positions (the base rate is 5.2%)
    labels: str = "any"

    def __post_init__(self):
        if self.labels not in ("decisive", "any"):
            raise ValueError(f"labels must be 'decisive' or 'any', got {self.labels!r}")


def citer_labels(slm_greedy, reference, decisive) -> np.ndarray:
    """1 where the SLM's greedy token differs from the reference's and either token is
    `decisive` (a digit or an operator), else 0."""
    return np.asarray([float(mine != ref and (decisive(mine) or decisive(ref)))
                       for mine, ref in zip(slm_greedy, reference)], dtype=np.float32)


def build(out: str | Path, *, slm: str | Path, llm: str | Path, recipe: PairRouterRecipe = PairRouterRecipe(),
          questions=None, progress: bool = True, router: str = "citer") -> dict:
    """Steps 1-4 of the module doc; returns the report (also written to <out>/report.json).
    `questions`: a QuestionSet (training/data/benchmark.py) instead of GSM8K's pool;
    `router`: "citer" (CITER's shortcut labels) or "r2r" (labels from the LLM's branches)."""
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")

    from relayllm.training.data import gsm8k
    from relayllm.training.data.benchmark import QuestionSet
    from relayllm.training.relay.checkpoints import load_checkpoint
    from relayllm.training.relay.llm_paths import gguf_solutions
    from relayllm.training.routers.features import (RouterData, feature_spec_for, precision_recall,
                                                    sequence_features, train_router)
    from relayllm.training.routers.onnx_export import export_onnx, export_parity

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, tokenizer = load_checkpoint(slm, what="SLM", commands=False)
    questions = questions if questions is not None else QuestionSet.from_config(gsm8k.path("pool"))
    pairs = questions.pairs(tokenizer, recipe.questions)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    t0 = time.perf_counter()
    paths = gguf_solutions(llm, prompts, recipe.max_new_tokens, cache_file=out / "llm_paths.jsonl",
                           stop_ids=(tokenizer.eos_token_id,), progress=progress)
    paths_s = time.perf_counter() - t0
    grade = questions.grader
    solved = [i for i, ((_, answer), path) in enumerate(zip(pairs, paths))
              if path and grade(tokenizer.decode(path, skip_special_tokens=True), answer)]
    say(f"the LLM ({Path(llm).name}) is right on {len(solved)} of {len(pairs)} questions: those are the references")

    if len(solved) < 2:
        from relayllm.training.errors import TrainingError

        raise TrainingError(f"the LLM is right on {len(solved)} of {len(pairs)} questions: a router needs at least "
                            "two references (one to train on, one held out); give more --questions")
    decisive_ids: dict[int, bool] = {}

    def decisive(token_id: int) -> bool:
        if recipe.labels == "any":
            return True
        if token_id not in decisive_ids:
            decisive_ids[token_id] = bool(DECISIVE & set(tokenizer.decode([token_id])))
        return decisive_ids[token_id]

    spec = feature_spec_for(model, top_k=recipe.top_k, token_embedding=False)
    dense, greedy, differ = [], [], 0
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    for q in tqdm(solved, desc="the SLM reads the references (torch)", disable=not progress, mininterval=1.0):
        prompt, path = prompts[q], paths[q]
        feats = sequence_features(model, prompt + path, spec, start=len(prompt) - 1)
        dense.append(feats.dense[: len(path)])
        greedy.append(feats.greedy[: len(path)].tolist())
        differ += sum(a != b for a, b in zip(greedy[-1], path))
    features_s = time.perf_counter() - t0
    extra: dict = {}
    if router == "r2r":
        from relayllm.training.routers.pair_r2r import r2r_labels

        t0 = time.perf_counter()
        labels, extra = r2r_labels(llm, [prompts[q] for q in solved], [paths[q] for q in solved], greedy,
                                   lambda k, ids: grade(tokenizer.decode(ids, skip_special_tokens=True),
                                                        pairs[solved[k]][1]),
                                   max_new_tokens=recipe.max_new_tokens, cache_file=out / "r2r_branches.jsonl",
                                   stop_ids=(tokenizer.eos_token_id,), progress=progress)
        extra["branches_s"] = time.perf_counter() - t0
        say(f"R2R: {extra['divergent']} of {extra['departures']} departures change the outcome (divergent)")
    else:
        labels = [citer_labels(g, paths[q], decisive) for g, q in zip(greedy, solved)]
    parts = [RouterData(d, np.asarray(g, dtype=np.int64), lab, np.full(len(g), q, dtype=np.int64))
             for d, g, lab, q in zip(dense, greedy, labels, solved)]
    data = RouterData.concat(parts, spec)
    train, held = data.split(recipe.held_out, recipe.seed)
    net = train_router(train, spec, None, hidden=recipe.hidden, epochs=recipe.epochs, seed=recipe.seed,
                       progress=progress)
    report = {
        "router": router, "recipe": asdict(recipe), "slm": Path(slm).name, "llm": Path(llm).name,
        "questions": len(pairs), "references": len(solved), "positions": len(data), "slm_differs": differ,
        "positives": int(data.label.sum()),
        "train": precision_recall(net, train),
        "held_out": {f"{t:g}": precision_recall(net, held, t) for t in THRESHOLDS},
        "llm_paths_s": paths_s, "features_s": features_s, **extra,
    }
    path = export_onnx(net, out / f"{router}.onnx", mode=router, info={"report": report})
    report["onnx_parity"] = export_parity(net, path)
    report["onnx_bytes"] = path.stat().st_size
    report["build_s"] = time.perf_counter() - started
    (out / "report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    for t, pr in report["held_out"].items():
        say(f"held out ({pr['questions']} questions, {pr['positives']} positives in {pr['n']} positions), "
            f"threshold {t}: precision {_pct(pr['precision'])}, recall {_pct(pr['recall'])}, fired {pr['fired']:.1%}")
    say(f"wrote {path} ({report['onnx_bytes'] / 1e6:.2f} MB) in {report['build_s'] / 60:.1f} min")
    return report


def _pct(x) -> str:
    return "n/a" if x is None else f"{x:.0%}"


def say(msg: str) -> None:
    print(f"[router-pair] {msg}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    from relayllm.protos import registry
    from relayllm.protos.errors import ReadableError

    parser = argparse.ArgumentParser(prog="python -m relayllm.training.routers.pair", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="output folder (citer.onnx or r2r.onnx, report.json, the 1.5B's paths)")
    parser.add_argument("--router", choices=ROUTERS, default="citer",
                        help="citer: every departure from the 1.5B's right answer is the LLM's (CITER's shortcut); "
                             "r2r: only departures after which the 1.5B, writing on, ends wrong (R2R; an LLM "
                             "branch per departure: 423 branches took 60 min here)")
    parser.add_argument("--slm", default=registry.DEFAULT_SLM, help="the device SLM: registry name or GGUF")
    parser.add_argument("--llm", default=registry.DEFAULT_LLM, help="the cloud LLM: registry name or GGUF")
    parser.add_argument("--questions", type=int, default=PairRouterRecipe.questions, help="pool questions to label")
    parser.add_argument("--labels", choices=("decisive", "any"), default=PairRouterRecipe.labels,
                        help="label the LLM wherever the SLM departs from the reference (any: CITER's own "
                             "shortcut, the default) or only where it departs on a digit or operator (decisive)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.questions < 2:
        print("error: --questions must be at least 2 (precision and recall are measured on held-out questions)",
              file=sys.stderr)
        return 2
    try:
        slm = registry.resolve_model(args.slm, progress=not args.no_progress)
        llm = registry.resolve_model(args.llm, progress=not args.no_progress)
        build(args.out, slm=slm, llm=llm, recipe=PairRouterRecipe(questions=args.questions, labels=args.labels),
              progress=not args.no_progress, router=args.router)
    except ReadableError as exc:  # a model that cannot be pulled, a bad file: one line
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The modes of the evaluation harness, their default settings, and running one by name.

Modes (all decode through the edge SDK's RelayDecoder, so every mode shares the code path,
the Help RPC, the fallback and the counters; training/eval/runner.py):
- slm:        the SLM alone, no cloud;
- llm:        the LLM alone: a router that hands the LLM every token through the cloud;
- relay:      the relay SLM writes `<call>N</call>` itself (the paper's protocol,
              docs/relay-protocol.md); a setting, when given, is the calibration
              `call_threshold` (the SLM writes `<call>` where its P(<call>) reaches it);
- random:     a random token router sending a share p of tokens to the LLM (a sweep over p
              gives a curve; the demo includes relay's own ratio);
- query:      the random query split (named so in tables, records.MODE_NAMES): a random
              share of whole questions goes to the LLM, the rest to the SLM. No router is
              trained or asked (unlike RouteLLM's, which learns which questions the SLM
              fails): it is the query-level counterpart of the random token router, a
              baseline. Decoding is greedy, so a question sent to the LLM gets the llm mode's
              answer and one kept the slm mode's: the records are reused, not recomputed;
- confidence: a token goes to the LLM when the SLM's top probability is below a threshold;
- r2r, citer: a learned ONNX token router (edge/token_router.py) fires when its p_llm is at
              or above a threshold (a curve over thresholds).
"""

from __future__ import annotations

import random
from dataclasses import asdict

from relayllm.training.errors import EvalError
from relayllm.training.eval.records import ModeRun, QuestionRecord

MODES = ("slm", "llm", "relay", "random", "query", "confidence", "r2r", "citer")
SWEPT_MODES = ("random", "query", "confidence", "r2r", "citer")
LEARNED_ROUTER_MODES = ("r2r", "citer")  # ONNX routers from training (edge/token_router.py)
# Relay without calibration by default: the SLM's own sampling alone decides when to call.
DEFAULT_CALL_THRESHOLD = None
DEFAULT_THRESHOLDS = (0.3, 0.5, 0.7)  # confidence, r2r, citer
DEFAULT_QUERY_SHARES = (0.25, 0.5, 0.75)


def random_query_split_run(slm_run: ModeRun, llm_run: ModeRun, share: float, seed: int = 0) -> ModeRun:
    """The random query split: a random `share` of whole questions to the LLM (no router).

    Decoding is greedy, so a question sent to the LLM gets exactly the llm mode's answer and
    one kept on the device the slm mode's: the router's records are those, picked per
    question. Exactly round(share * n) questions go to the LLM, chosen at random by `seed`.
    """
    if slm_run.n != llm_run.n:
        raise EvalError("random query split: slm and llm runs must cover the same questions")
    if not 0.0 <= share <= 1.0:
        raise EvalError(f"random query split: share must be in [0, 1], got {share}")
    n = slm_run.n
    to_llm = set(random.Random(seed).sample(range(n), round(share * n)))
    records = []
    for i in range(n):
        src = llm_run.records[i] if i in to_llm else slm_run.records[i]
        records.append(QuestionRecord(**{**asdict(src), "routed_to": "llm" if i in to_llm else "slm"}))
    wall = sum(r.wall_s for r in records)
    return ModeRun(mode="query", setting=share, setting_name="share", records=records, wall_s=wall)


def saved_run(out, mode, examples) -> ModeRun | None:
    """A run of `mode` already saved in `out` for the same questions, or None."""
    from relayllm.training.eval.report import read_runs

    for r in read_runs(out):
        if r.mode == mode and [x.question for x in r.records] == [x.question for x in examples]:
            return r
    return None


def run_named_mode(ev, mode: str, examples, slm, *, out, thresholds=None, ratios=None, router=None,
                   command_context: str | None = None) -> list[ModeRun]:
    """Every run of `mode` (one per threshold / p / share) with the Evaluator `ev`; `out` is
    the results folder, where random and query modes find earlier relay / slm / llm runs."""
    if mode == "slm":
        return [ev.run_slm(examples, slm)]
    if mode == "llm":
        return [ev.run_llm(examples, slm)]
    if mode == "relay":
        return [ev.run_relay(examples, slm, t, command_context=command_context)
                for t in (thresholds or [DEFAULT_CALL_THRESHOLD])]
    if mode == "confidence":
        return [ev.run_confidence(examples, slm, t) for t in (thresholds or DEFAULT_THRESHOLDS)]
    if mode in LEARNED_ROUTER_MODES:
        if not router:
            raise EvalError(f"--mode {mode} needs --router FILE.onnx (a router trained by `relayllm train`)")
        return [ev.run_learned_router(examples, slm, router, t, mode)
                for t in (thresholds or DEFAULT_THRESHOLDS)]
    if mode == "random":
        if not ratios:
            relay = saved_run(out, "relay", examples)
            if relay is None:
                raise EvalError(f"random mode needs --ratio, or a relay run of the same questions in {out} "
                                "(run --mode relay first) to match its LLM token ratio")
            ratios = [relay.llm_token_ratio]
        return [ev.run_random(examples, slm, p) for p in ratios]
    if mode == "query":
        slm_run = saved_run(out, "slm", examples) or ev.run_slm(examples, slm)
        llm_run = saved_run(out, "llm", examples) or ev.run_llm(examples, slm)
        return [ev.run_query(slm_run, llm_run, s) for s in (ratios or DEFAULT_QUERY_SHARES)]
    raise EvalError(f"unknown mode {mode!r}")

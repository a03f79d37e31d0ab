"""The demo's first part: the real pair answering GSM8K questions live in the terminal.

Pulls (or reuses) Qwen2.5-Coder-0.5B-Instruct for the device and Qwen2.5-Coder-1.5B-Instruct
for the cloud from the model registry (protos/registry.py), serves the 1.5B with the
project's cloud on loopback, and lets the 0.5B answer a few questions from GSM8K's training
pool (never the subsets the tables report) through the edge SDK. Who decides when the cloud
writes: a confidence router (the LLM writes a token where the SLM's top probability is
below the threshold), because the relay SLM trained for this pair (qwen2.5-coder-0.5b-relay)
does not yet answer better than the 0.5B alone (README, "Relay training on the pair"), and
pulling it builds its GGUF (minutes). Every piece is printed as it comes, the cloud's marked,
then each answer's LLM share and whether it is right.

Not here: the table (training/demo.py runs the built-in benchmark after this).
"""

from __future__ import annotations

import sys
import time

# The threshold the GSM8K table chose on validation (docs/results/gsm8k: 0.3 / 0.5 / 0.7 gave
# 30 / 30 / 50% on 20 questions, 0.7 at 10% LLM tokens); see the README's real-pair table.
CONFIDENCE_THRESHOLD = 0.7
MAX_TOKENS = 320


def live_pair(questions: int = 2, *, threshold: float = CONFIDENCE_THRESHOLD, max_tokens: int = MAX_TOKENS,
              progress: bool = True, out=None) -> dict:
    """Answer `questions` GSM8K pool questions on the real pair, printing each live; returns figures."""
    from relayllm.edge import Limits, RelayDecoder, Sampling
    from relayllm.edge.terminal import print_stream
    from relayllm.edge.client import CloudClient
    from relayllm.edge.models import load_slm
    from relayllm.edge.routers import ConfidenceRouter
    from relayllm.protos import registry
    from relayllm.training.data import gsm8k
    from relayllm.training.data.grading import grade
    from relayllm.training.data.prompts import user_message
    from relayllm.training.eval.runner import local_cloud

    out = out or sys.stdout
    started = time.perf_counter()
    # 1) the pair, from the registry (pulled once, then reused)
    slm_path = registry.resolve_model(registry.DEFAULT_SLM, progress=progress)
    llm_path = registry.resolve_model(registry.DEFAULT_LLM, progress=progress)
    pulled_s = time.perf_counter() - started
    figures = {"slm": slm_path.name, "llm": llm_path.name, "threshold": threshold, "answers": []}
    # 2) the cloud on loopback with the 1.5B; the 0.5B on the device, a confidence router deciding
    with local_cloud(llm_path) as target:
        client = CloudClient(target, deadline_s=30.0)  # a 2-core machine shared with the SLM: slack for prefill
        try:
            decoder = RelayDecoder(load_slm(slm_path, n_ctx=2048), cloud=client, chat=True,
                                   limits=Limits(max_calls=max_tokens, max_total_tokens=max_tokens,
                                                 max_llm_tokens=max_tokens),
                                   sampling=Sampling(temperature=0.0), router=ConfidenceRouter(threshold), deadline_s=30.0)
            print(f"\nThe real pair: {slm_path.name} on the device, {llm_path.name} in the cloud (loopback); "
                  f"the cloud writes where the SLM's top probability < {threshold:g} (marked ⟦…⟧ or in colour)",
                  file=out)
            # 3) a few questions, each piece as it is written
            for i, ex in enumerate(gsm8k.load("pool", questions)):
                print(f"\nQ{i + 1}. {ex.question}\n", file=out)
                t0 = time.perf_counter()
                result = print_stream(decoder.stream(user_message(ex.question)), out)
                right = grade(result.text, ex.answer)
                gold = ex.answer.rsplit("####", 1)[-1].strip()
                print(f"   -> {'right' if right else 'wrong'} (gold {gold}); LLM share {result.llm_token_ratio:.1%} "
                      f"({result.llm_tokens} of {result.slm_tokens + result.llm_tokens} tokens, {result.calls} calls), "
                      f"{time.perf_counter() - t0:.1f} s", file=out)
                figures["answers"].append({"correct": right, "llm_token_ratio": result.llm_token_ratio,
                                           "calls": result.calls, "tokens": result.slm_tokens + result.llm_tokens,
                                           "degraded": result.degraded,
                                           "degraded_reasons": list(result.degraded_reasons)})
        finally:
            client.close()
    figures["pull_s"], figures["total_s"] = pulled_s, time.perf_counter() - started
    return figures

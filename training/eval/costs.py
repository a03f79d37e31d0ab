"""Cost as users pay it, per answer, beside the paper's LLM token ratio.

For one run (records.py) against the LLM answering alone (the `llm` run of the same
questions):
- cloud tokens per answer: LLM tokens the cloud prefilled and generated (its usage), and
  their sum relative to the LLM alone;
- cloud seconds per answer: the cloud's compute (usage.server_seconds), relative to the LLM alone;
- device seconds per answer: the wall time less the time the edge waited on the cloud;
- wall time per answer over a link with a round trip of `rtt_s` (40 ms by default): the
  loopback wall time plus one round trip per cloud call (each call is one streaming RPC on
  an open HTTP/2 connection: the request's trip up and the first reply's trip down; the
  rest of the reply streams behind it). The model is checked against a real delay line
  (link.py) in tests/test_eval_costs.py. Relative to the LLM alone streaming its answer
  over the same link (one call, so one round trip).
Not here: choosing settings (selection.py) or printing (report.py).
"""

from __future__ import annotations

from relayllm.training.eval.records import ModeRun

LINK_RTT_S = 0.040  # the simulated network round trip between device and cloud


def relative(value: float, reference: float) -> float | None:
    """value / reference; None when the reference is zero (nothing to compare with)."""
    return value / reference if reference > 0 else None


def wall_with_link_per_answer(run: ModeRun, rtt_s: float = LINK_RTT_S) -> float:
    """Mean wall time per answer with `rtt_s` added per cloud call."""
    if rtt_s < 0:
        raise ValueError(f"a round trip cannot be negative, got {rtt_s}")
    return sum(r.wall_s + rtt_s * r.calls for r in run.records) / run.n if run.n else 0.0


def cost_figures(run: ModeRun, llm: ModeRun | None, rtt_s: float = LINK_RTT_S) -> dict:
    """The cost columns of one row: per-answer figures, and each relative to the LLM alone (`llm`)."""
    prefilled, generated = run.per_answer("cloud_prefilled"), run.per_answer("cloud_generated")
    cloud_s, wall_link = run.per_answer("cloud_s"), wall_with_link_per_answer(run, rtt_s)
    out = {
        "cloud_prefilled_per_answer": prefilled,
        "cloud_generated_per_answer": generated,
        "cloud_tokens_per_answer": prefilled + generated,
        "cloud_s_per_answer": cloud_s,
        "device_s_per_answer": run.per_answer("device_s"),
        "wall_s_per_answer": run.per_answer("wall_s"),
        "link_rtt_s": rtt_s,
        "wall_with_link_s_per_answer": wall_link,
        "cloud_tokens_vs_llm": None,
        "cloud_s_vs_llm": None,
        "wall_with_link_vs_llm": None,
    }
    if llm is not None:
        out["cloud_tokens_vs_llm"] = relative(prefilled + generated, llm.per_answer("cloud_prefilled")
                                              + llm.per_answer("cloud_generated"))
        out["cloud_s_vs_llm"] = relative(cloud_s, llm.per_answer("cloud_s"))
        out["wall_with_link_vs_llm"] = relative(wall_link, wall_with_link_per_answer(llm, rtt_s))
    return out

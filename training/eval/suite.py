"""The GSM8K table on the real pair: settings chosen on validation, reported on the development test.

`relayllm eval --suite gsm8k --mode all` runs, through the edge SDK and the project's cloud
on loopback (Qwen2.5-Coder-0.5B-Instruct on the device, 1.5B in the cloud, from the model
registry):

1. validation (training/data/gsm8k/validation.jsonl): slm and the confidence router at
   every threshold (the LLM alone is not needed to choose, and is the costliest mode); the same rule as the demo (training/eval/selection.py: the best accuracy
   at an LLM token ratio under the cap) picks its threshold;
2. development test (dev-test.jsonl): slm, llm, confidence at the chosen threshold, the
   query split at each share (free: it reuses the slm and llm records), and the random token
   router at increasing p until it reaches the chosen confidence row's accuracy (both sides
   measured). The test grows in chunks of `chunk` questions, every mode on each chunk before
   the next, and the table is written after each: a run cut short still reports every mode
   on the same questions.
With a relay SLM (`--relay-slm GGUF`: `relayllm train` on training/relay/recipes/), its call
threshold is chosen on validation by the same rule, and the development test gets relay at
that setting plus the relay SLM alone (calls off), so that what calling adds and what the
fine-tuning adds are told apart. With a CITER or an R2R router for the pair
(`--citer-router ONNX`, `--r2r-router ONNX`: training/routers/pair.py), its threshold is
chosen on validation by the same rule and the development test gets it at that threshold.
A router not given is said to be missing from the table, never filled in.

Every answer is appended to `<out>/records/` as it is made: an interrupted run (or one
stopped by `--budget-minutes`) goes on where it stopped, and the committed records are what
the README's table is generated from (`python -m relayllm.training.eval.suite DIR` renders it
again). Not here: how one mode runs (runner.py) or is shown (report.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

THRESHOLDS = (0.3, 0.5, 0.7)  # confidence: top probability below which the LLM writes a token
QUERY_SHARES = (0.25, 0.5)
# fixed points (not the chosen row's own ratio, which moves as the test grows): the sweep stops
# at the first p that reaches the chosen row's accuracy
RANDOM_P = (0.1, 0.3)
# relay: None = the SLM's own greedy choice alone; else RelayDecoder's call_threshold (it
# writes `<call>` where its probability of it reaches the threshold)
RELAY_CALL_THRESHOLDS = (None, 0.1)
# CITER, R2R: p_llm at which the router hands a token to the LLM
ROUTER_THRESHOLDS = (0.5, 0.7, 0.9)
ROUTER_NAMES = {"citer": "CITER", "r2r": "R2R"}


def run_table(ev, *, val_ex, test_ex, slm, out: str | Path, thresholds=THRESHOLDS, ratio_cap: float | None = None,
              chunk: int = 10, say=print, relay_slm=None, relay_context: str | None = None,
              routers: dict | None = None) -> dict:
    """Both passes (module doc) with the Evaluator `ev`; writes `<out>` and returns the summary.
    `routers`: {"citer" | "r2r": ONNX file} of learned routers for the pair."""
    from relayllm.training import eval as E

    ratio_cap = E.RATIO_CAP if ratio_cap is None else ratio_cap
    out = Path(out)
    started = time.perf_counter()
    # 1) validation: where the threshold is chosen
    say(f"validation ({len(val_ex)} questions): slm, confidence at {', '.join(map(str, thresholds))}")
    val = {"slm": [ev.run_slm(val_ex, slm)],
           "confidence": [ev.run_confidence(val_ex, slm, t) for t in thresholds]}
    choice = E.choose(val["confidence"], ratio_cap)
    say(f"chosen on validation: confidence threshold {choice.setting:g} ({choice.reason})")
    relay_choice = None
    if relay_slm is not None:
        context_name = relay_context or "command context from its GGUF"
        say(f"validation: relay ({context_name}) at call thresholds {RELAY_CALL_THRESHOLDS}")
        val["relay"] = [ev.run_relay(val_ex, relay_slm, t, relay_context) for t in RELAY_CALL_THRESHOLDS]
        relay_choice = E.choose(val["relay"], ratio_cap)
        say(f"chosen on validation: relay call_threshold {relay_choice.setting} ({relay_choice.reason})")
    routers = {m: f for m, f in (routers or {}).items() if f is not None}
    router_choices = {}
    for mode, router in routers.items():
        say(f"validation: {ROUTER_NAMES[mode]} ({Path(router).name}) at thresholds {ROUTER_THRESHOLDS}")
        val[mode] = [ev.run_learned_router(val_ex, slm, router, t, mode) for t in ROUTER_THRESHOLDS]
        router_choices[mode] = E.choose(val[mode], ratio_cap)
        say(f"chosen on validation: {ROUTER_NAMES[mode]} threshold {router_choices[mode].setting:g} "
            f"({router_choices[mode].reason})")
    # 2) development test: what the table reports, grown in chunks so that a run cut short
    #    (or stopped by its budget) always leaves a table of every mode on the same questions
    step = max(1, min(chunk, len(test_ex)))
    for k in range(step, len(test_ex) + step, step):
        part = test_ex[:k]  # earlier questions come back from the journal
        say(f"development test: questions 1-{len(part)} of {len(test_ex)}")
        tst = {"slm": [ev.run_slm(part, slm)], "llm": [ev.run_llm(part, slm)],
               "confidence": [ev.run_confidence(part, slm, choice.setting)]}
        tst["query"] = [ev.run_query(tst["slm"][0], tst["llm"][0], s) for s in QUERY_SHARES]
        best = tst["confidence"][0]
        tst["random"] = E.sweep_until(lambda p: ev.run_random(part, slm, p), RANDOM_P, best.accuracy)
        if relay_choice is not None:
            tst["relay"] = [ev.run_relay(part, relay_slm, relay_choice.setting, relay_context)]
            tst["relay-alone"] = [ev.run_relay_alone(part, relay_slm)]
        for mode, router in routers.items():
            tst[mode] = [ev.run_learned_router(part, slm, router, router_choices[mode].setting, mode)]
        summary = _write(out, val, tst, choice, ratio_cap, time.perf_counter() - started, len(val_ex), len(part),
                         relay_choice, router_choices)
    return summary


def _write(out: Path, val: dict, tst: dict, choice, ratio_cap: float, eval_s: float, n_val: int, n_test: int,
           relay_choice=None, router_choices=None) -> dict:
    from relayllm.training import eval as E

    for mode, runs in tst.items():
        E.write_mode_json(out, mode, runs, {"data": "GSM8K dev-test", "n": n_test})
    for mode, runs in val.items():
        E.write_mode_json(out / "validation", mode, runs, {"data": "GSM8K validation", "n": n_val})
    summary = {"choice": choice.to_dict(), "ratio_cap": ratio_cap, "eval_s": eval_s,
               "n_validation": n_val, "n_test": n_test,
               "relay_choice": relay_choice.to_dict() if relay_choice is not None else None,
               **{f"{mode}_choice": c.to_dict() for mode, c in (router_choices or {}).items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    render(out)
    return summary


def render(out: str | Path) -> Path:
    """results.md of a GSM8K table folder, from its saved runs (the README's table comes from here)."""
    from relayllm.training import eval as E

    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    tst = E.read_runs(out)
    val = E.read_runs(out / "validation") if (out / "validation").is_dir() else []
    by = {}
    for r in tst:
        by.setdefault(r.mode, []).append(r)
    slm, llm = by["slm"][0], by["llm"][0]
    rows = [slm, llm, *by.get("relay", []), *by.get("relay-alone", []), *by.get("confidence", []),
            *by.get("citer", []), *by.get("r2r", []), *by.get("query", []), *sorted(by.get("random", []), key=lambda r: r.setting)]
    labels = [r.label + (" (chosen on validation)" if r.mode in ("confidence", "relay", "citer", "r2r") else "") for r in rows]
    best = by["confidence"][0]
    gap = E.gap_recovered(slm.accuracy, best.accuracy, llm.accuracy)
    headline = "\n".join(f"- {h}" for h in (
        f"GSM8K development test, n={slm.n}; settings chosen on validation (n={summary['n_validation']}); "
        f"rule: {E.rule_text(summary['ratio_cap'])}",
        f"gap recovered by the confidence router (conf - slm) / (llm - slm): {E.fmt_fraction(gap)} "
        f"at {best.llm_token_ratio:.1%} LLM tokens",
        *([f"gap recovered by relay: {E.fmt_fraction(E.gap_recovered(slm.accuracy, by['relay'][0].accuracy, llm.accuracy))} "
           f"at {by['relay'][0].llm_token_ratio:.1%} LLM tokens"] if by.get("relay") else
          ["relay: not in this table (no relay SLM given)"]),
        *(f"gap recovered by {name}: {E.fmt_fraction(E.gap_recovered(slm.accuracy, by[mode][0].accuracy, llm.accuracy))} "
          f"at {by[mode][0].llm_token_ratio:.1%} LLM tokens" if by.get(mode) else
          f"{name}: not in this table (no router given)" for mode, name in ROUTER_NAMES.items()),
        f"evaluation wall time: {summary['eval_s'] / 60:.0f} min on this machine (records resumed count their own time)",
    ))
    table = ("## Development test\n\n" + E.markdown_table(rows, llm=llm, labels=labels)
             + ("\n## Validation: every run (where the threshold is chosen)\n\n" + E.markdown_table(val)
                if val else ""))
    table_path, _ = E.write_report(out, rows, headline=headline, table=table, plot_runs=val or None,
                                   plot_split="validation" if val else "")
    return table_path


if __name__ == "__main__":
    print(render(sys.argv[1]))

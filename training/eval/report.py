"""The evaluation's outputs and headline figures.

- `<out>/<mode>.json` per mode (summary + per-question records), read back by `read_runs`;
- `results.md`: the table of every run found in the folder, warnings (empty or cut answers),
  and the headline lines; two plots (training/eval/plots.py): accuracy against the LLM token
  ratio, and accuracy against cloud compute per answer;
- the headline figure gap recovered; the cost saved against the random router is in
  selection.py (measured points only).

The table's columns:
- accuracy: right / n, its 95% Wilson interval (stats.py) and n;
- LLM token ratio: LLM-written / all response tokens (records.py); calls per answer;
- cloud tokens / answer: LLM tokens the cloud prefilled + generated (its usage), and the sum
  as a multiple of the LLM answering alone (costs.py);
- cloud s / answer: the cloud's compute seconds, and the multiple of the LLM alone's;
- device s / answer: wall time less the wait on the cloud;
- wall / answer over the link: loopback wall time plus one simulated round trip (40 ms) per
  cloud call, and the multiple of the LLM alone streaming its answer over the same link.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from relayllm.training.eval.costs import LINK_RTT_S, cost_figures
from relayllm.training.eval.modes import MODES
from relayllm.training.eval.records import ModeRun
from relayllm.training.eval.stats import fmt_accuracy

PLOT_FILE = "accuracy_vs_llm_ratio.png"
COMPUTE_PLOT_FILE = "accuracy_vs_cloud_compute.png"
TABLE_FILE = "results.md"


def gap_recovered(slm_accuracy: float, relay_accuracy: float, llm_accuracy: float) -> float | None:
    """(relay - slm) / (llm - slm); None when the LLM is no better than the SLM (no gap to recover)."""
    gap = llm_accuracy - slm_accuracy
    if gap <= 0:
        return None
    return (relay_accuracy - slm_accuracy) / gap


def write_mode_json(out_dir: str | Path, mode: str, runs: Sequence[ModeRun], meta: dict | None = None) -> Path:
    """`<out_dir>/<mode>.json`: every run of the mode, summary and per-question records."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{mode}.json"
    payload = {"mode": mode, "meta": meta or {}, "runs": [r.to_dict() for r in runs]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def read_runs(out_dir: str | Path) -> list[ModeRun]:
    """Every run saved in `<out_dir>/<mode>.json` files, in the order of MODES, then others."""
    out = Path(out_dir)
    files = sorted(out.glob("*.json"), key=lambda p: (MODES.index(p.stem) if p.stem in MODES else len(MODES), p.stem))
    runs: list[ModeRun] = []
    for path in files:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict) or "runs" not in payload or "mode" not in payload:
            continue  # summary.json or a file that is not ours
        runs.extend(ModeRun.from_dict(d) for d in payload["runs"])
    return runs


def table_header(rtt_s: float = LINK_RTT_S) -> tuple[str, ...]:
    return ("mode", "accuracy (95% CI, n)", "LLM token ratio", "calls/answer",
            "cloud tokens/answer: prefill + gen (x LLM)", "cloud s/answer (x LLM)", "device s/answer",
            f"wall/answer, {rtt_s * 1000:g} ms link (x LLM)")


def _times(x: float | None) -> str:
    return "" if x is None else f" ({x:.2f}x)"


def reference_llm(runs: Sequence[ModeRun]) -> ModeRun | None:
    """The LLM-alone run the cost columns are relative to (the first `llm` run), if any."""
    return next((r for r in runs if r.mode == "llm"), None)


def table_rows(runs: Sequence[ModeRun], llm: ModeRun | None = None, rtt_s: float = LINK_RTT_S,
               labels: Sequence[str] | None = None) -> list[tuple[str, ...]]:
    llm = llm or reference_llm(runs)
    rows = []
    for i, r in enumerate(runs):
        c = cost_figures(r, llm, rtt_s)
        rows.append((
            labels[i] if labels else r.label,
            fmt_accuracy(r.correct, r.n),
            f"{r.llm_token_ratio:.2%}",
            f"{r.calls_per_question:.2f}",
            f"{c['cloud_prefilled_per_answer']:.0f} + {c['cloud_generated_per_answer']:.0f}"
            + _times(c["cloud_tokens_vs_llm"]),
            f"{c['cloud_s_per_answer']:.3f}" + _times(c["cloud_s_vs_llm"]),
            f"{c['device_s_per_answer']:.3f}",
            f"{c['wall_with_link_s_per_answer']:.3f}" + _times(c["wall_with_link_vs_llm"]),
        ))
    return rows


def row_figures(run: ModeRun, llm: ModeRun | None, rtt_s: float = LINK_RTT_S) -> dict:
    """Every figure of one table row, machine-readable (summary.json)."""
    from relayllm.training.eval.stats import wilson_interval

    low, high = wilson_interval(run.correct, run.n)
    return {**run.summary(), "label": run.label, "accuracy_ci95": [low, high], **cost_figures(run, llm, rtt_s)}


def markdown_table(runs: Sequence[ModeRun], **kwargs) -> str:
    """The table in markdown; kwargs go to table_rows (llm reference, rtt_s, labels)."""
    rows = [table_header(kwargs.get("rtt_s", LINK_RTT_S)), *table_rows(runs, **kwargs)]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def text_table(runs: Sequence[ModeRun], **kwargs) -> str:
    """The same table, aligned for a terminal."""
    rows = [table_header(kwargs.get("rtt_s", LINK_RTT_S)), *table_rows(runs, **kwargs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]) + "\n"


def plot_points(runs: Sequence[ModeRun], x: str = "ratio") -> dict[str, list[tuple[float, float]]]:
    """mode -> [(x, accuracy)]: x is the LLM token ratio, or ("compute") the cloud seconds per
    answer as a share of the LLM alone's (runs without an llm run: no compute points)."""
    llm = reference_llm(runs)
    points: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        if x == "ratio":
            points.setdefault(r.mode, []).append((r.llm_token_ratio, r.accuracy))
        elif llm is not None:
            share = cost_figures(r, llm)["cloud_s_vs_llm"]
            if share is not None:
                points.setdefault(r.mode, []).append((share, r.accuracy))
    return points


def write_report(out_dir: str | Path, runs: Sequence[ModeRun] | None = None, headline: str = "",
                 table: str | None = None, plot_runs: Sequence[ModeRun] | None = None,
                 plot_split: str = "") -> tuple[Path, Path]:
    """`results.md` (the table, or `table` when given, plus `headline` lines) and the two PNG
    plots, for `runs` or all runs in the folder (`plot_runs`: other runs for the plots, e.g.
    every setting on validation, named by `plot_split`). Returns (results.md, the ratio plot)."""
    from relayllm.training.eval.plots import plot_accuracy_vs_ratio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(runs) if runs is not None else read_runs(out)
    md = "# relayllm evaluation\n\n" + (table if table is not None else markdown_table(runs))
    warnings = [w for r in runs for w in r.warnings()]
    if warnings:
        md += "\n" + "".join(f"- warning: {w}\n" for w in warnings)
    if headline:
        md += "\n" + headline.rstrip() + "\n"
    md += f"\n![accuracy vs LLM token ratio]({PLOT_FILE})\n"
    plotted = list(plot_runs) if plot_runs is not None else runs
    where = f" ({plot_split} split)" if plot_split else ""
    compute = plot_points(plotted, "compute")
    if compute:
        plot_accuracy_vs_ratio(compute, out / COMPUTE_PLOT_FILE, title="Accuracy vs cloud compute per answer" + where,
                               xlabel="cloud compute per answer (cloud seconds, % of the LLM answering alone)")
        md += f"\n![accuracy vs cloud compute per answer]({COMPUTE_PLOT_FILE})\n"
    table_path = out / TABLE_FILE
    table_path.write_text(md, encoding="utf-8")
    plot_path = plot_accuracy_vs_ratio(plot_points(plotted), out / PLOT_FILE,
                                       title="Accuracy vs LLM token ratio" + where)
    return table_path, plot_path


def fmt_fraction(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"

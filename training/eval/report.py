"""The evaluation's outputs and headline figures.

- `<out>/<mode>.json` per mode (summary + per-question records), read back by `read_runs`;
- `results.md`: the table of every run found in the folder, warnings (empty or cut answers),
  and the headline lines; `accuracy_vs_llm_ratio.png` (training/eval/plots.py);
- headline figures: the share of the SLM-LLM accuracy gap relay recovers, and the cost it
  saves against the random token router at the same accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from relayllm.training.eval.modes import MODES
from relayllm.training.eval.records import ModeRun

PLOT_FILE = "accuracy_vs_llm_ratio.png"
TABLE_FILE = "results.md"


def gap_recovered(slm_accuracy: float, relay_accuracy: float, llm_accuracy: float) -> float | None:
    """(relay - slm) / (llm - slm); None when the LLM is no better than the SLM (no gap to recover)."""
    gap = llm_accuracy - slm_accuracy
    if gap <= 0:
        return None
    return (relay_accuracy - slm_accuracy) / gap


def ratio_at_accuracy(curve: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """Smallest LLM token ratio at which the piecewise-linear curve [(ratio, accuracy)] reaches `accuracy`.

    Points are taken in order of ratio; None when no point reaches it.
    """
    pts = sorted((float(r), float(a)) for r, a in curve)
    if not pts:
        return None
    if pts[0][1] >= accuracy:
        return pts[0][0]
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        if a1 >= accuracy > a0:
            return r0 + (accuracy - a0) * (r1 - r0) / (a1 - a0)
    return None


@dataclass
class CostSaved:
    """Cost saved by relay against the random router at relay's accuracy."""

    random_ratio: float | None  # random router's LLM token ratio at relay's accuracy (None: not reached)
    saved: float | None         # 1 - relay_ratio / random_ratio
    note: str                   # human-readable

    def to_dict(self) -> dict:
        return asdict(self)


def cost_saved_vs_random(relay: ModeRun, random_runs: Sequence[ModeRun], slm: ModeRun | None = None,
                         llm: ModeRun | None = None) -> CostSaved:
    """Interpolate the random router's curve to relay's accuracy; saved = 1 - relay_ratio / random_ratio.

    The random router at p=0 is the SLM alone and at p=1 the LLM alone, so those runs (when
    given, and on the same SLM) close the curve at both ends.
    """
    curve = [(r.llm_token_ratio, r.accuracy) for r in random_runs]
    if slm is not None:
        curve.append((0.0, slm.accuracy))
    if llm is not None:
        curve.append((1.0, llm.accuracy))
    at = ratio_at_accuracy(curve, relay.accuracy)
    if at is None:
        return CostSaved(None, None, f"not reached (the random router never reaches {relay.accuracy:.1%})")
    if at <= 0:
        return CostSaved(at, None, "n/a (the SLM alone already reaches relay's accuracy)")
    saved = 1.0 - relay.llm_token_ratio / at
    return CostSaved(at, saved, f"{saved:.1%} (random router needs {at:.2%} LLM tokens for {relay.accuracy:.1%})")


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


TABLE_HEADER = ("mode", "accuracy", "LLM token ratio", "calls/question", "tokens (slm + llm)", "wall time")


def table_rows(runs: Sequence[ModeRun]) -> list[tuple[str, ...]]:
    rows = []
    for r in runs:
        rows.append((
            r.label,
            f"{r.accuracy:.1%} ({sum(x.correct for x in r.records)}/{r.n})",
            f"{r.llm_token_ratio:.2%}",
            f"{r.calls_per_question:.2f}",
            f"{r.tokens} ({r.slm_tokens} + {r.llm_tokens})",
            f"{r.wall_s:.1f} s",
        ))
    return rows


def markdown_table(runs: Sequence[ModeRun]) -> str:
    rows = [TABLE_HEADER, *table_rows(runs)]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def text_table(runs: Sequence[ModeRun]) -> str:
    """The same table, aligned for a terminal."""
    rows = [TABLE_HEADER, *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]) + "\n"


def plot_points(runs: Sequence[ModeRun]) -> dict[str, list[tuple[float, float]]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        points.setdefault(r.mode, []).append((r.llm_token_ratio, r.accuracy))
    return points


def write_report(out_dir: str | Path, runs: Sequence[ModeRun] | None = None, headline: str = "") -> tuple[Path, Path]:
    """`results.md` (the table, plus `headline` lines) and the PNG plot, for `runs` or all runs in the folder."""
    from relayllm.training.eval.plots import plot_accuracy_vs_ratio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(runs) if runs is not None else read_runs(out)
    md = "# relayllm evaluation\n\n" + markdown_table(runs)
    warnings = [w for r in runs for w in r.warnings()]
    if warnings:
        md += "\n" + "".join(f"- warning: {w}\n" for w in warnings)
    if headline:
        md += "\n" + headline.rstrip() + "\n"
    md += f"\n![accuracy vs LLM token ratio]({PLOT_FILE})\n"
    table_path = out / TABLE_FILE
    table_path.write_text(md, encoding="utf-8")
    plot_path = plot_accuracy_vs_ratio(plot_points(runs), out / PLOT_FILE)
    return table_path, plot_path


def fmt_fraction(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"

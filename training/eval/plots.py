"""The pictures users look at: accuracy against LLM token ratio (and against cloud compute
per answer, relative to the LLM alone), one mark or curve per mode.

Single-point modes (slm, llm, relay) are big labelled marks; swept modes (random, query,
confidence, ...) are curves through their points in order of LLM token ratio. The x axis
is symmetric-log so that relay's ~1% and the LLM's 100% both stay readable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from relayllm.training.eval.records import MODE_NAMES

# Stable colours per mode so every plot of the project reads the same.
MODE_COLOURS = {
    "slm": "tab:gray",
    "llm": "black",
    "relay": "tab:red",
    "relay-warmup": "tab:pink",
    "random": "tab:blue",
    "query": "tab:green",
    "confidence": "tab:orange",
    "r2r": "tab:purple",
    "citer": "tab:brown",
}
SINGLE_POINT_MARKERS = {"slm": "s", "llm": "D", "relay": "*"}


def plot_accuracy_vs_ratio(points: Mapping[str, Iterable[tuple[float, float]]], path: str | Path,
                           title: str = "Accuracy vs LLM token ratio",
                           xlabel: str = "LLM token ratio (LLM-written tokens / all response tokens)") -> Path:
    """Write a PNG of accuracy (y) vs a share (x) for `points`: mode -> [(share, accuracy)];
    the share is the LLM token ratio by default, or another cost relative to the LLM alone
    (cloud compute per answer: `xlabel` says which).

    Shares and accuracies are fractions (a share may pass 1); the axes show percent.
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen here, and none needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=120)
    try:
        for mode, pts in points.items():
            pts = sorted((float(r), float(a)) for r, a in pts)
            if not pts:
                continue
            colour = MODE_COLOURS.get(mode)
            xs = [r * 100 for r, _ in pts]
            ys = [a * 100 for _, a in pts]
            if len(pts) == 1 and mode in SINGLE_POINT_MARKERS:
                ax.scatter(xs, ys, s=160 if mode == "relay" else 80, marker=SINGLE_POINT_MARKERS[mode],
                           color=colour, label=mode, zorder=5, edgecolors="black", linewidths=0.6)
                ax.annotate(f"{mode} {ys[0]:.0f}%", (xs[0], ys[0]), textcoords="offset points",
                            xytext=(6, 6), fontsize=8)
            else:
                ax.plot(xs, ys, marker="o", markersize=4, color=colour, label=MODE_NAMES.get(mode, mode), zorder=3)
        ax.set_xscale("symlog", linthresh=1.0)  # linear below 1%, logarithmic above
        top = max((r for pts in points.values() for r, _ in pts), default=1.0)
        ax.set_xlim(left=0, right=max(150.0, top * 150))
        ax.set_ylim(bottom=0, top=105)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}%"))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("accuracy")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path

"""One benchmark figure beside its peer, and the table `relayllm bench` prints of them.

Ratio = the figure's value / the peer's value, always (RATIO_HOW). Used by training/bench/cli.py.
"""

from __future__ import annotations

from dataclasses import dataclass


RATIO_HOW = "value / peer value"


@dataclass
class Figure:
    """One measured figure and the peer it is compared to (same run, same machine)."""

    group: str  # "edge" | "local" | "cloud"
    name: str
    value: float
    unit: str
    peer_name: str = ""
    peer_value: float | None = None
    ratio: float | None = None  # value / peer_value, always (RATIO_HOW)
    goal: str = ""  # e.g. ">= 0.97 (ratio)"
    met: bool | None = None
    ratio_how: str = RATIO_HOW

    @classmethod
    def pair(cls, group, name, value, peer_name, peer_value, unit, *, goal="", goal_min=None, goal_max=None):
        ratio = value / peer_value if peer_value else None
        met = None
        if ratio is not None and goal_min is not None:
            met = ratio >= goal_min
        if ratio is not None and goal_max is not None:
            met = ratio <= goal_max if met is None else (met and ratio <= goal_max)
        return cls(group, name, float(value), unit, peer_name, None if peer_value is None else float(peer_value),
                   ratio, goal, met)


def _fmt(x) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def format_table(figures: list[Figure]) -> str:
    head = ("group", "figure", "value", "unit", "peer", "peer value", "ratio (value / peer)", "goal")
    rows = [(f.group, f.name, _fmt(f.value), f.unit, f.peer_name, _fmt(f.peer_value),
             "-" if f.ratio is None else f"{f.ratio:.3f}",
             f.goal + ("" if f.met is None else (" met" if f.met else " NOT met"))) for f in figures]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) if i in (0, 1, 3, 4, 7) else str(c).rjust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(head), sep, *map(line, rows)])

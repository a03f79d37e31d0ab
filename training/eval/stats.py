"""Confidence intervals for the table's accuracies: the 95% Wilson score interval.

Every accuracy the harness reports carries its n and this interval (report.py): on a few
hundred questions two modes a few points apart are often not different, and the interval
says so. Wilson rather than the normal approximation because it stays inside [0, 1] and
behaves at 0% and 100% (the LLM alone is often near 100%).
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% quantile of the standard normal


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of `correct` successes in `n` trials, as fractions; (0, 1) when n is 0."""
    if n < 0 or not 0 <= correct <= max(n, 0):
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 and n the bound is exactly 0 or 1 (rounding would leave 0.9999999999999999)
    low = 0.0 if correct == 0 else max(0.0, centre - half)
    high = 1.0 if correct == n else min(1.0, centre + half)
    return low, high


def fmt_accuracy(correct: int, n: int) -> str:
    """`87.0% (83.1-90.0, n=300)`: the accuracy, its 95% Wilson interval and n."""
    low, high = wilson_interval(correct, n)
    acc = correct / n if n else 0.0
    return f"{acc:.1%} ({low * 100:.1f}-{high * 100:.1f}, n={n})"

"""Training's error for a person (bad config, missing checkpoint, no usable data)."""

from __future__ import annotations

from relayllm.protos.errors import ReadableError


class TrainingError(ReadableError):
    """Bad input to training, evaluation or the benchmarks: one readable line."""

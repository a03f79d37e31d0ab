"""Training's errors for a person (bad config, missing checkpoint, no usable data).

TrainingError is the part's one error type (a protos ReadableError: `relayllm` prints it as
one line). DataError and EvalError name where the mistake is, for callers that want to tell
them apart; both are TrainingErrors.
"""

from __future__ import annotations

from relayllm.protos.errors import ReadableError


class TrainingError(ReadableError):
    """Bad input to training, evaluation or the benchmarks: one readable line."""


class DataError(TrainingError):
    """A data file a person gave cannot be used (missing, bad JSON, a line without a field)."""


class EvalError(TrainingError):
    """A problem with the evaluation's input a person can fix (bad option, missing model)."""

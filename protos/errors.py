"""The one error type every part's errors derive from: an error for a person.

The `relayllm` command (protos/cli.py) prints it as one readable line and exits with 2.
Each part raises its own subclass (relayllm.edge.errors.EdgeError,
relayllm.cloud.errors.CloudError, relayllm.training.errors.TrainingError), so no part
imports another part to report a mistake.
"""

from __future__ import annotations


class ReadableError(Exception):
    """A mistake in what a person asked for (a bad flag, a missing file): one readable line."""

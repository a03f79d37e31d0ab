"""The edge SDK's error for a person (bad flag, missing model file): one readable line."""

from __future__ import annotations

from relayllm.protos.errors import ReadableError


class EdgeError(ReadableError):
    """A mistake in what the app or the user asked of the edge SDK."""

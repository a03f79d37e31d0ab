"""The cloud service's error for a person (bad config, missing model): one readable line."""

from __future__ import annotations

from relayllm.protos.errors import ReadableError


class ServiceError(ReadableError):
    """A mistake in how the operator asked the cloud service to run."""

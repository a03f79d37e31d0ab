"""Both backends under one name, imported on first use (so torch loads only when the
transformers backend is asked for)."""

from __future__ import annotations

__all__ = ["LlamaCppBackend", "TransformersBackend"]


def __getattr__(name):
    if name == "LlamaCppBackend":
        from relayllm.cloud.llamacpp_backend import LlamaCppBackend

        return LlamaCppBackend
    if name == "TransformersBackend":
        from relayllm.cloud.transformers_backend import TransformersBackend

        return TransformersBackend
    raise AttributeError(name)

"""relayllm.edge: the device SDK. An on-device SLM on llama.cpp that asks a cloud LLM for a few tokens.

    from relayllm.edge import RelayDecoder, Limits, Sampling, load_slm, events

Names are loaded on first use (PEP 562), so `import relayllm.edge` never imports llama_cpp,
grpc or numpy. Imports only relayllm.protos from the other parts; never torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "RelayDecoder": "relayllm.edge.decoder",
    "DecoderBusy": "relayllm.edge.decoder",
    "Limits": "relayllm.edge.config",
    "Sampling": "relayllm.edge.config",
    "load_slm": "relayllm.edge.models",
    "Conversation": "relayllm.edge.conversation",
    "Privacy": "relayllm.edge.privacy",
    "AuditLog": "relayllm.edge.privacy",
    "DailyBudget": "relayllm.edge.privacy",
    "redact_personal": "relayllm.edge.privacy",
    "EdgeError": "relayllm.edge.errors",
}
_MODULES = {"events", "client", "routers", "models", "privacy"}

__all__ = sorted(_EXPORTS) + sorted(_MODULES)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _MODULES:
        value = importlib.import_module(f"relayllm.edge.{name}")
    else:
        raise AttributeError(f"module 'relayllm.edge' has no attribute {name!r}")
    globals()[name] = value
    return value

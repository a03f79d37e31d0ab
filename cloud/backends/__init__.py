"""Model engines behind the relay service, chosen by name and imported on first use (so
torch loads only when the transformers backend is asked for).

    from relayllm.cloud.backends import backend_class
    LlamaCpp = backend_class("llama.cpp")

Names: "llama.cpp" or "llama.cpp-batched" (backends/llamacpp_batched.py: every session with a
token to decode in one forward pass per step; Info reports "llama.cpp-batched"),
"llama.cpp-contexts" (backends/llamacpp.py: a llama.cpp context per session, keeping a session's last logits across a Sync), "transformers" (backends/hf.py: a KV cache per
session, forward passes under one lock), "transformers-batched" (backends/hf_batched.py:
transformers' continuous batching manager),
"openai-gateway" (backends/openai_gateway.py: a gateway to vLLM, SGLang, llama-server).
The protocol they implement is backends/base.py.
"""

from __future__ import annotations

import importlib

_BACKENDS = {
    "llama.cpp": ("relayllm.cloud.backends.llamacpp_batched", "BatchedLlamaCppBackend"),
    "llama.cpp-batched": ("relayllm.cloud.backends.llamacpp_batched", "BatchedLlamaCppBackend"),
    "llama.cpp-contexts": ("relayllm.cloud.backends.llamacpp", "LlamaCppBackend"),
    "transformers": ("relayllm.cloud.backends.hf", "TransformersBackend"),
    "transformers-batched": ("relayllm.cloud.backends.hf_batched", "BatchedTransformersBackend"),
    "openai-gateway": ("relayllm.cloud.backends.openai_gateway", "OpenAIGatewayBackend"),
}
NAMES = tuple(_BACKENDS)


def backend_class(name: str):
    """The Backend class registered under `name` (imports its module now)."""
    try:
        module, attr = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(NAMES)}") from None
    return getattr(importlib.import_module(module), attr)


def __getattr__(name):
    for module, attr in _BACKENDS.values():
        if attr == name:
            return getattr(importlib.import_module(module), attr)
    raise AttributeError(name)

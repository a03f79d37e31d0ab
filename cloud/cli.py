"""`relayllm serve`: run the relay service on a GGUF (llama.cpp), a Hugging Face model
(transformers), or as a gateway in front of an OpenAI-compatible engine (vLLM, SGLang,
llama-server).

Settings come from defaults, a TOML file (--config), RELAYLLM_* variables and these flags, in
that order (cloud/settings.py); bearer tokens only from a file or the environment. Imports
nothing heavy at import time (the backends load inside run).
"""

from __future__ import annotations

HELP = "run the cloud LLM service (gRPC)"

import argparse
import logging
import os
from pathlib import Path

from relayllm.cloud.errors import ServiceError
from relayllm.cloud.settings import ServeSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    helps = {f: ServeSettings.__dataclass_fields__[f].metadata["help"] for f in ServeSettings.__dataclass_fields__
             if f != "server"}
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument("--config", help="a TOML file of settings (keys as below, without dashes; or RELAYLLM_CONFIG)")
    parser.add_argument("--model", help=helps["model"])
    parser.add_argument("--backend", choices=("auto", "llama.cpp", "llama.cpp-batched", "llama.cpp-contexts",
                                              "transformers", "transformers-batched", "openai-gateway"),
                        help=helps["backend"] + " (default auto)")
    parser.add_argument("--upstream-url", help=helps["upstream_url"])
    parser.add_argument("--tokenizer", help=helps["tokenizer"])
    parser.add_argument("--prompt-format", choices=("auto", "tokens", "text"), help=helps["prompt_format"])
    parser.add_argument("--cache-salt", action="store_const", const=True, help=helps["cache_salt"])
    parser.add_argument("--gguf-file", help=helps["gguf_file"])
    parser.add_argument("--device", help=helps["device"])
    parser.add_argument("--host", help=helps["host"] + " (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help=helps["port"] + " (default 50051)")
    parser.add_argument("--tokens-file", help=helps["tokens_file"] + " (or RELAYLLM_TOKENS='tok:tenant,...')")
    parser.add_argument("--tls-cert", help=helps["tls_cert"])
    parser.add_argument("--tls-key", help=helps["tls_key"])
    parser.add_argument("--insecure", action="store_const", const=True, help=helps["insecure"])
    parser.add_argument("--metrics-port", type=int, help=helps["metrics_port"])
    parser.add_argument("--max-sessions", type=int, help=helps["max_sessions"] + " (default 8)")
    parser.add_argument("--max-sessions-per-tenant", type=int)
    parser.add_argument("--max-tokens-per-call", type=int)
    parser.add_argument("--n-ctx", type=int, help=helps["n_ctx"] + " (default 2048)")
    parser.add_argument("--threads", type=int, help=helps["threads"])
    parser.add_argument("--max-concurrent-streams", type=int)
    parser.add_argument("--rate", dest="rate_per_s", type=float, help="requests per second per tenant (default: no limit)")
    parser.add_argument("--max-call-s", type=float, help="server-side cap on one call's duration (default 120)")
    parser.add_argument("--max-queue-s", type=float, help="longest wait for a model slot (default 30)")
    parser.add_argument("--drain-s", type=float, help="on SIGTERM: seconds for in-flight calls to finish (default 10)")
    parser.add_argument("--log-level", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def make_backend(settings: ServeSettings):
    """The backend the settings name, loaded now (heavy imports happen here)."""
    from relayllm.cloud.backends import backend_class

    if settings.backend == "openai-gateway" or (settings.backend == "auto" and settings.upstream_url):
        if not settings.upstream_url or not settings.model:
            raise ServiceError("the openai-gateway backend needs --upstream-url and --model (the engine's model name)")
        try:
            return backend_class("openai-gateway")(
                settings.upstream_url, model=settings.model, tokenizer=settings.tokenizer, n_ctx=settings.n_ctx,
                max_sessions=settings.max_sessions, prompt_format=settings.prompt_format,
                salt_tenants=settings.cache_salt, api_key=os.environ.get("RELAYLLM_UPSTREAM_API_KEY"))
        except (OSError, ValueError) as err:
            raise ServiceError(f"cannot use the engine at {settings.upstream_url}: {err}") from None
    from relayllm.protos import registry

    # a GGUF path, an HF folder, or a registry name (pulled on first use); by default the
    # registry's cloud LLM, Qwen2.5-Coder-1.5B-Instruct
    model = registry.resolve_model(settings.model or registry.DEFAULT_LLM)
    kind = settings.backend
    if kind == "auto":
        kind = "transformers" if model.is_dir() else "llama.cpp"
    if kind.startswith("llama.cpp"):
        if not model.is_file():
            raise ServiceError(f"the llama.cpp backend needs a GGUF file, got a folder: {model}")
        try:
            return backend_class(kind)(model, n_ctx=settings.n_ctx, max_sessions=settings.max_sessions,
                                       n_threads=settings.threads)
        except ValueError as err:  # llama.cpp could not load it
            raise ServiceError(f"cannot load {model} with llama.cpp ({err}); is it a GGUF file?") from None
    try:
        TransformersBackend = backend_class(kind)
    except ImportError as err:
        raise ServiceError(f"the transformers backend needs torch and transformers (pip install 'relayllm[cloud]'): {err}")
    try:
        return TransformersBackend(model, gguf_file=settings.gguf_file, device=settings.device,
                                   max_sessions=settings.max_sessions, n_ctx=settings.n_ctx)
    except (OSError, ValueError) as err:
        raise ServiceError(f"cannot load {model} with transformers: {err}") from None


def run(args) -> int:
    import asyncio

    from relayllm.cloud import settings as settings_module
    from relayllm.cloud.metrics import Metrics
    from relayllm.cloud.serve import serve_forever
    from relayllm.cloud.servicer import VERSION

    if args.version:
        print(VERSION)
        return 0
    settings = settings_module.load(vars(args))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = settings.server
    backend = make_backend(settings)
    metrics = None
    try:
        if settings.metrics_port is not None:
            try:
                metrics = Metrics.serving(settings.metrics_port, settings.metrics_host)
            except OSError as err:
                raise ServiceError(f"cannot serve metrics on {settings.metrics_host}:{settings.metrics_port}: {err}")
        scheme = "tls" if config.tls_cert else "insecure"

        def ready(running) -> None:
            extra = f", metrics on {settings.metrics_host}:{metrics.port}" if metrics else ""
            print(f"relayllm serve: {backend.name} {backend.model_name} listening on {settings.host}:{running.port} "
                  f"({scheme}, {'bearer tokens' if config.tokens else 'no auth'}{extra}); Ctrl-C stops", flush=True)

        try:
            asyncio.run(serve_forever(backend, host=settings.host, port=settings.port, config=config,
                                      metrics=metrics, on_ready=ready))
        except OSError as err:
            raise ServiceError(f"cannot listen on {settings.host}:{settings.port}: {err}") from None
    finally:
        backend.close()
        if metrics is not None:
            metrics.close()
    print("relayllm serve: stopped", flush=True)
    return 0

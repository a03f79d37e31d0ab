"""`relayllm serve`: run the relay service on a GGUF (llama.cpp) or a Hugging Face model.

Imports nothing heavy at import time (the backends load inside run).
"""

from __future__ import annotations

HELP = "run the cloud LLM service (gRPC)"

import argparse
import logging
from pathlib import Path

from relayllm.cloud.errors import ServiceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="a GGUF file (llama.cpp backend) or a Hugging Face model folder (transformers backend)")
    parser.add_argument("--backend", choices=("auto", "llama.cpp", "transformers"), default="auto",
                        help="auto: llama.cpp for a .gguf file, transformers for a folder (default)")
    parser.add_argument("--gguf-file", help="transformers backend: a GGUF file inside --model to load through transformers")
    parser.add_argument("--device", default="cpu", help="transformers backend: torch device (cpu, cuda, ...)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=50051, help="port (0 = any free port; default 50051)")
    parser.add_argument("--token", action="append", default=[], metavar="TOKEN:TENANT",
                        help="accept bearer TOKEN for TENANT (repeatable); without any, no auth")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain (enables TLS with --tls-key)")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    parser.add_argument("--max-sessions", type=int, default=8, help="sessions whose KV cache is kept (LRU)")
    parser.add_argument("--max-sessions-per-tenant", type=int, default=32)
    parser.add_argument("--max-tokens-per-call", type=int, default=256)
    parser.add_argument("--n-ctx", type=int, default=2048, help="most tokens one session holds")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    parser.add_argument("--max-concurrent-streams", type=int, default=32)
    parser.add_argument("--rate", type=float, default=None, help="requests per second per tenant (default: no limit)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def _tokens(pairs: list[str]) -> dict[str, str] | None:
    if not pairs:
        return None
    tokens = {}
    for pair in pairs:
        token, sep, tenant = pair.rpartition(":")
        if not sep or not token or not tenant:
            raise ServiceError(f"--token wants TOKEN:TENANT, got {pair!r}")
        tokens[token] = tenant
    return tokens


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    if not path.is_file():
        raise ServiceError(f"{what} not found: {path}")
    return path.read_bytes()


def _positive(args, *names) -> None:
    for name in names:
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ServiceError(f"--{name.replace('_', '-')} must be positive")


def make_backend(args):
    model = Path(args.model)
    if not model.exists():
        raise ServiceError(f"model not found: {model}")
    kind = args.backend
    if kind == "auto":
        kind = "transformers" if model.is_dir() else "llama.cpp"
    if kind == "llama.cpp":
        if not model.is_file():
            raise ServiceError(f"the llama.cpp backend needs a GGUF file, got a folder: {model}")
        from relayllm.cloud.backends import backend_class

        LlamaCppBackend = backend_class("llama.cpp")
        try:
            return LlamaCppBackend(model, n_ctx=args.n_ctx, max_sessions=args.max_sessions, n_threads=args.threads)
        except ValueError as err:  # llama.cpp could not load it
            raise ServiceError(f"cannot load {model} with llama.cpp ({err}); is it a GGUF file?") from None
    try:
        from relayllm.cloud.backends import backend_class

        TransformersBackend = backend_class("transformers")
    except ImportError as err:
        raise ServiceError(f"the transformers backend needs torch and transformers (pip install 'relayllm[cloud]'): {err}")
    try:
        return TransformersBackend(model, gguf_file=args.gguf_file, device=args.device, max_sessions=args.max_sessions,
                                   n_ctx=args.n_ctx)
    except (OSError, ValueError) as err:
        raise ServiceError(f"cannot load {model} with transformers: {err}") from None


def run(args) -> int:
    import asyncio

    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.serve import serve_forever

    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _positive(args, "max_sessions", "max_sessions_per_tenant", "max_tokens_per_call", "n_ctx", "threads",
              "max_concurrent_streams", "rate")
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ServiceError("TLS needs both --tls-cert and --tls-key")
    config = ServerConfig(max_tokens_per_call=args.max_tokens_per_call, max_context_tokens=args.n_ctx,
                          max_sessions=args.max_sessions, tokens=_tokens(args.token),
                          tls_cert=_read(args.tls_cert, "TLS certificate"), tls_key=_read(args.tls_key, "TLS key"),
                          max_concurrent_streams=args.max_concurrent_streams,
                          max_sessions_per_tenant=args.max_sessions_per_tenant, rate_per_s=args.rate)
    backend = make_backend(args)
    scheme = "tls" if config.tls_cert else "insecure"

    def ready(running) -> None:
        print(f"relayllm serve: {backend.name} {backend.model_name} listening on {args.host}:{running.port} "
              f"({scheme}, {'bearer tokens' if config.tokens else 'no auth'}); Ctrl-C stops", flush=True)

    try:
        asyncio.run(serve_forever(backend, host=args.host, port=args.port, config=config, on_ready=ready))
    except OSError as err:
        raise ServiceError(f"cannot listen on {args.host}:{args.port}: {err}") from None
    finally:
        backend.close()
    print("relayllm serve: stopped", flush=True)
    return 0

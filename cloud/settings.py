"""What `relayllm serve` runs, from four sources: defaults < a TOML file < RELAYLLM_* environment
variables < command-line flags.

    # relayllm.toml                      # environment
    model = "/models/llm.gguf"           RELAYLLM_PORT=50051
    port = 50051                         RELAYLLM_TOKENS="tok-a:team-a,tok-b:team-b"
    metrics_port = 9464                  RELAYLLM_TOKENS_FILE=/run/secrets/relay-tokens
    tokens_file = "/run/secrets/tokens"  RELAYLLM_MAX_QUEUE_S=10
    max_queue_s = 10

Bearer tokens come from a file (`tokens_file`, one TOKEN:TENANT per line, # comments) or the
RELAYLLM_TOKENS variable, never from a flag: a command line is visible to every user of the
machine (ps). With tokens set the service requires TLS unless `insecure` says otherwise.
The engine's API key (openai-gateway) comes from RELAYLLM_UPSTREAM_API_KEY only.
Not here: the flags themselves (cloud/cli.py) or the limits' meaning (cloud/config.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from relayllm.cloud.config import ServerConfig
from relayllm.cloud.errors import ServiceError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib


@dataclass
class ServeSettings:
    """How `relayllm serve` runs; the limits of the service are in `server` (ServerConfig)."""

    model: str | None = field(default=None, metadata={
        "help": "a GGUF file (llama.cpp), a Hugging Face model folder (transformers), a registry name "
                "(`relayllm models list`; default: qwen2.5-coder-1.5b-instruct), or the upstream engine's "
                "model name (openai-gateway)"})
    backend: str = field(default="auto", metadata={
        "help": "auto (llama.cpp for a .gguf file, transformers for a folder), llama.cpp or llama.cpp-batched "
                "(sessions batched), "
                "llama.cpp-contexts (a context per session), transformers (a KV cache per session), "
                "transformers-batched (continuous batching), openai-gateway"})
    upstream_url: str | None = field(default=None, metadata={
        "help": "openai-gateway: the engine's base URL, e.g. http://vllm:8000/v1"})
    tokenizer: str | None = field(default=None, metadata={
        "help": "openai-gateway: a GGUF or tokenizer folder with the engine's tokenizer (token ids both ways)"})
    prompt_format: str = field(default="auto", metadata={
        "help": "openai-gateway: send prompts as token ids (tokens), text, or probe the engine (auto)"})
    cache_salt: bool = field(default=False, metadata={
        "help": "openai-gateway: send cache_salt=tenant so tenants never share prefix-cache entries (vLLM)"})
    gguf_file: str | None = field(default=None, metadata={"help": "transformers: a GGUF file inside --model"})
    device: str = field(default="cpu", metadata={"help": "transformers: torch device (cpu, cuda, ...)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=50051, metadata={"help": "port (0 = any free port)"})
    n_ctx: int = field(default=2048, metadata={"help": "most tokens one session holds"})
    threads: int | None = field(default=None, metadata={
        "help": "llama.cpp threads (default: the physical cores this process may use, not every logical one)"})
    max_sessions: int = field(default=8, metadata={"help": "sessions whose KV cache is kept"})
    metrics_port: int | None = field(default=None, metadata={
        "help": "serve Prometheus metrics on this port (/metrics); none by default"})
    metrics_host: str = field(default="127.0.0.1", metadata={"help": "address of the metrics endpoint"})
    tokens_file: str | None = field(default=None, metadata={"help": "bearer tokens, one TOKEN:TENANT per line"})
    tls_cert: str | None = field(default=None, metadata={"help": "PEM certificate chain (TLS with tls_key)"})
    tls_key: str | None = field(default=None, metadata={"help": "PEM private key"})
    insecure: bool = field(default=False, metadata={
        "help": "allow bearer tokens without TLS (they then cross the network in clear text)"})
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if self.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        for name in ("n_ctx", "max_sessions", "threads"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive, got {value!r}")
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in 0..65535, got {self.port}")


# the ServerConfig fields an operator sets (max_context_tokens and max_sessions follow n_ctx and max_sessions)
SERVER_KEYS = ("max_tokens_per_call", "max_call_s", "max_queue_s", "max_message_bytes", "max_sessions_per_tenant",
               "max_concurrent_streams", "max_calls_per_tenant", "rate_per_s", "drain_s")
SERVE_KEYS = tuple(f.name for f in fields(ServeSettings) if f.name != "server")
_TYPES = {**{f.name: f.type for f in fields(ServeSettings)}, **{f.name: f.type for f in fields(ServerConfig)}}


def parse_tokens(text: str, where: str) -> dict[str, str]:
    """TOKEN:TENANT pairs, one per line or comma-separated; '#' starts a comment."""
    tokens = {}
    for raw in text.replace(",", "\n").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        token, sep, tenant = line.rpartition(":")
        if not sep or not token.strip() or not tenant.strip():
            raise ServiceError(f"{where}: each entry must be TOKEN:TENANT (got an entry without both)")
        tokens[token.strip()] = tenant.strip()
    if not tokens:
        raise ServiceError(f"{where}: no TOKEN:TENANT entries")
    return tokens


def _convert(key: str, value: str, where: str):
    kind = str(_TYPES[key])
    try:
        if "bool" in kind:
            if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError
            return value.lower() in ("1", "true", "yes")
        if "int" in kind:
            return int(value)
        if "float" in kind:
            return float(value)
    except ValueError:
        raise ServiceError(f"{where}: {value!r} is not a valid {kind.split(' |')[0]}") from None
    return value


def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    p = Path(path)
    if not p.is_file():
        raise ServiceError(f"{what} not found: {p}")
    return p.read_bytes()


def load(flags: dict, *, environ=None) -> ServeSettings:
    """Merge defaults, the TOML file named by flags['config'] (or RELAYLLM_CONFIG), the
    environment and the flags given (None = not given); every mistake is a ServiceError."""
    environ = os.environ if environ is None else environ
    values: dict = {}
    config_path = flags.get("config") or environ.get("RELAYLLM_CONFIG")
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ServiceError(f"config file not found: {path}")
        try:
            table = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ServiceError(f"{path}: not valid TOML ({err})") from None
        table = table.get("serve", table)
        unknown = sorted(set(table) - set(SERVE_KEYS) - set(SERVER_KEYS))
        if unknown:
            raise ServiceError(f"{path}: unknown keys {', '.join(unknown)}; known: {', '.join(SERVE_KEYS + SERVER_KEYS)}")
        values.update(table)
    for key in SERVE_KEYS + SERVER_KEYS:
        name = f"RELAYLLM_{key.upper()}"
        if name in environ:
            values[key] = _convert(key, environ[name], name)
    values.update({k: v for k, v in flags.items() if v is not None and k in SERVE_KEYS + SERVER_KEYS})

    tokens = None
    if values.get("tokens_file"):
        tokens = parse_tokens(_read_file(values["tokens_file"], "tokens file").decode(), values["tokens_file"])
    elif environ.get("RELAYLLM_TOKENS"):
        tokens = parse_tokens(environ["RELAYLLM_TOKENS"], "RELAYLLM_TOKENS")
    tls_cert, tls_key = _read_file(values.get("tls_cert"), "TLS certificate"), _read_file(values.get("tls_key"), "TLS key")
    if tokens and tls_cert is None and not values.get("insecure"):
        raise ServiceError("bearer tokens without TLS would cross the network in clear text: give tls_cert and "
                           "tls_key, or allow it explicitly with --insecure (RELAYLLM_INSECURE=1)")
    try:
        serve = {k: v for k, v in values.items() if k in SERVE_KEYS}
        server = ServerConfig(**{k: v for k, v in values.items() if k in SERVER_KEYS},
                              max_context_tokens=serve.get("n_ctx", 2048), max_sessions=serve.get("max_sessions", 8),
                              tokens=tokens, tls_cert=tls_cert, tls_key=tls_key)
        return ServeSettings(**serve, server=server)
    except (TypeError, ValueError) as err:
        raise ServiceError(f"bad setting: {err}") from None

"""The cloud service's settings: one dataclass, every field with its help, checked on creation.

`relayllm serve` builds it from flags, a TOML file and RELAYLLM_* environment variables
(cloud/settings.py); tests build it directly. It holds limits and credentials, never a
model: which backend runs is the CLI's choice (cloud/backends/).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields


@dataclass
class ServerConfig:
    """Limits, credentials and transport of one relay service."""

    # -- per call ------------------------------------------------------------------------
    max_tokens_per_call: int = field(default=256, metadata={"help": "most tokens one Help call may ask for"})
    max_context_tokens: int = field(default=4096, metadata={
        "help": "most tokens one session may hold, context plus generated (capped by the backend's n_ctx)"})
    max_call_s: float = field(default=120.0, metadata={
        "help": "server-side cap on one call's duration, whatever deadline the client set"})
    max_queue_s: float = field(default=30.0, metadata={
        "help": "longest a call waits for a free session slot or worker before RESOURCE_EXHAUSTED"})
    max_message_bytes: int = field(default=1 << 20, metadata={"help": "largest request or reply message"})
    # -- sessions and tenants --------------------------------------------------------------
    max_sessions: int = field(default=64, metadata={"help": "sessions reported by Info (the backend's cache decides)"})
    max_sessions_per_tenant: int = field(default=32, metadata={
        "help": "sessions one tenant may hold; its oldest idle one is evicted first"})
    max_concurrent_streams: int = field(default=32, metadata={
        "help": "calls in flight at once (Help, Sync and EndSession alike)"})
    max_calls_per_tenant: int | None = field(default=None, metadata={
        "help": "calls in flight at once per tenant (None: half of max_concurrent_streams, at least 1)"})
    rate_per_s: float | None = field(default=None, metadata={
        "help": "requests per second per tenant (token bucket); None = no limit"})
    # -- credentials and transport ----------------------------------------------------------
    tokens: dict[str, str] | None = field(default=None, metadata={
        "help": "bearer token -> tenant; None = no authentication (one anonymous tenant)"})
    tls_cert: bytes | None = field(default=None, metadata={"help": "PEM certificate chain (TLS on with tls_key)"})
    tls_key: bytes | None = field(default=None, metadata={"help": "PEM private key"})
    drain_s: float = field(default=10.0, metadata={
        "help": "on stop: how long in-flight calls may finish after health goes NOT_SERVING"})

    def __post_init__(self):
        for name in ("max_tokens_per_call", "max_context_tokens", "max_sessions", "max_sessions_per_tenant",
                     "max_concurrent_streams", "max_message_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_call_s", "max_queue_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive seconds, got {getattr(self, name)!r}")
        if self.drain_s < 0:
            raise ValueError(f"drain_s must be >= 0, got {self.drain_s!r}")
        if self.rate_per_s is not None and not self.rate_per_s > 0:
            raise ValueError(f"rate_per_s must be positive or None (no limit), got {self.rate_per_s!r}")
        if self.max_calls_per_tenant is None:
            self.max_calls_per_tenant = max(1, self.max_concurrent_streams // 2)
        elif self.max_calls_per_tenant < 1:
            raise ValueError(f"max_calls_per_tenant must be positive, got {self.max_calls_per_tenant!r}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both a certificate and a key")
        if self.tokens is not None:
            if not self.tokens:
                raise ValueError("tokens is empty: give at least one token, or None for no authentication")
            for token, tenant in self.tokens.items():
                if not token or not tenant:
                    raise ValueError("every bearer token needs a tenant name, and no token may be empty")

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}

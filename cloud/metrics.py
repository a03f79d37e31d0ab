"""Prometheus metrics of one relay service (prometheus_client), served on their own port.

    metrics = Metrics.serving(port=9464)    # http://host:9464/metrics
    metrics = Metrics(None)                 # off: every method is a no-op

What is counted, per tenant (the tenant name, never a token): calls by method and status,
tokens prefilled / reused / generated, call latency and queue wait (histograms), session
cache evictions; and sessions held. Each service has its own registry, so two services in
one process (tests, replicas) never mix their numbers. Not here: tracing or logs.
"""

from __future__ import annotations

from typing import Callable

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, registry):
        self.registry = registry
        self._server = None
        if registry is None:
            return
        from prometheus_client import Counter, Gauge, Histogram

        self.calls = Counter("relayllm_calls", "RPCs answered, by method and status", ["method", "tenant", "code"],
                             registry=registry)
        self.tokens = Counter("relayllm_tokens", "tokens by kind: prefilled, reused (KV cache), generated",
                              ["kind", "tenant"], registry=registry)
        self.latency = Histogram("relayllm_call_seconds", "server time of a successful call", ["method", "tenant"],
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.queue = Histogram("relayllm_queue_seconds", "wait for a turn on the model", ["tenant"],
                               buckets=LATENCY_BUCKETS, registry=registry)
        self.evictions = Counter("relayllm_cache_evictions", "sessions evicted from the KV cache", ["tenant"],
                                 registry=registry)
        self.cache_hits = Counter("relayllm_cache_hits", "calls that reused a session's KV (reused tokens > 0)",
                                  ["tenant"], registry=registry)
        self.sessions = Gauge("relayllm_sessions", "sessions whose KV cache is held", registry=registry)
        self.in_flight = Gauge("relayllm_calls_in_flight", "calls admitted and not finished", registry=registry)

    @classmethod
    def serving(cls, port: int, addr: str = "0.0.0.0") -> "Metrics":
        """Metrics with their own registry, exposed over HTTP at addr:port/metrics (port 0: any free)."""
        from prometheus_client import CollectorRegistry, start_http_server

        metrics = cls(CollectorRegistry())
        metrics._server, _ = start_http_server(port, addr=addr, registry=metrics.registry)
        return metrics

    @property
    def port(self) -> int | None:
        return self._server.server_port if self._server is not None else None

    def watch(self, sessions: Callable[[], int], in_flight: Callable[[], int]) -> None:
        """Read the session count and in-flight calls when scraped."""
        if self.registry is not None:
            self.sessions.set_function(sessions)
            self.in_flight.set_function(in_flight)

    def call(self, method: str, tenant: str, code: str, seconds: float | None, usage=None) -> None:
        if self.registry is None:
            return
        self.calls.labels(method, tenant, code).inc()
        if seconds is not None:
            self.latency.labels(method, tenant).observe(seconds)
        if usage is not None:
            self.tokens.labels("prefilled", tenant).inc(usage.prefilled_tokens)
            self.tokens.labels("reused", tenant).inc(usage.reused_tokens)
            self.tokens.labels("generated", tenant).inc(usage.generated_tokens)
            self.queue.labels(tenant).observe(usage.queue_seconds)
            if usage.reused_tokens:
                self.cache_hits.labels(tenant).inc()

    def evicted(self, tenant: str) -> None:
        if self.registry is not None:
            self.evictions.labels(tenant).inc()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

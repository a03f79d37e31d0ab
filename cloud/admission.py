"""Who may call, how often, and when a call's turn on the model comes: auth, rate, slots.

Every RPC (Help, Sync, EndSession alike) passes through `Admission` before it takes a worker:

1. `tenant(metadata)`: the bearer token names the tenant (UNAUTHENTICATED otherwise);
2. `rate(tenant)`: a token bucket per tenant (RESOURCE_EXHAUSTED when spent);
3. `call(tenant)`: one of max_concurrent_streams in-flight calls, at most
   max_calls_per_tenant of them for one tenant (RESOURCE_EXHAUSTED at once when over);
4. `turn(tenant, ...)`: inside the worker, a fair turn on the model. The gate lets `capacity`
   calls run on the backend at once and hands free places round-robin between tenants (a
   tenant with 30 waiting calls and one with 1 take turns), waiting at most max_queue_s.

Not here: validating request fields (cloud/planning.py) or which sessions stay cached
(cloud/sessions.py).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from relayllm.cloud.config import ServerConfig
from relayllm.cloud.planning import Refused, exhausted
from relayllm.cloud.sessions import Stopped


class QueueTimeout(Stopped):
    """Waited max_queue_s for a turn on the model."""


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class FairGate:
    """At most `capacity` holders at once; waiting callers are served round-robin by tenant."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("the gate needs room for at least one call")
        self.capacity = capacity
        self._cond = threading.Condition()
        self._running = 0
        self._waiting: dict[str, deque] = {}  # tenant -> its waiting tickets, oldest first
        self._order: deque[str] = deque()  # tenants with waiting tickets, whose turn is next first

    def _withdraw(self, tenant: str, ticket) -> None:
        queue = self._waiting[tenant]
        queue.remove(ticket)
        if not queue:
            del self._waiting[tenant]
            self._order.remove(tenant)
        self._cond.notify_all()

    @contextmanager
    def turn(self, tenant: str, *, should_stop: Callable[[], bool], timeout_s: float) -> Iterator[float]:
        """Hold one place for the block; yields the seconds waited. Raises Stopped/QueueTimeout."""
        ticket = object()
        start = time.monotonic()
        with self._cond:
            if tenant not in self._waiting:
                self._waiting[tenant] = deque()
                self._order.append(tenant)
            self._waiting[tenant].append(ticket)
            while not (self._running < self.capacity and self._order[0] == tenant
                       and self._waiting[tenant][0] is ticket):
                if should_stop():
                    self._withdraw(tenant, ticket)
                    raise Stopped()
                if time.monotonic() - start >= timeout_s:
                    self._withdraw(tenant, ticket)
                    raise QueueTimeout()
                self._cond.wait(0.05)
            self._waiting[tenant].popleft()
            self._order.popleft()
            if self._waiting[tenant]:
                self._order.append(tenant)  # its next call waits behind the other tenants
            else:
                del self._waiting[tenant]
            self._running += 1
            self._cond.notify_all()
        try:
            yield time.monotonic() - start
        finally:
            with self._cond:
                self._running -= 1
                self._cond.notify_all()

    def waiting(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._waiting.values())


class Admission:
    """Auth, rate limit and in-flight limits of one service (see the module docstring)."""

    def __init__(self, config: ServerConfig, *, model_slots: int):
        self.config = config
        self.gate = FairGate(model_slots)
        self._lock = threading.Lock()
        self._buckets: dict[str, _Bucket] = {}
        self._in_flight = 0
        self._per_tenant: dict[str, int] = {}
        self.closed = False  # draining: new calls are refused with UNAVAILABLE (clients go elsewhere)

    def tenant(self, metadata) -> str:
        if self.config.tokens is None:
            return ""
        header = dict(metadata or ()).get("authorization", "")
        if not header:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (metadata 'authorization: Bearer T')")
        scheme, _, token = header.partition(" ")
        tenant = self.config.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        return tenant

    def rate(self, tenant: str) -> None:
        rate = self.config.rate_per_s
        if not rate:
            return
        now = time.monotonic()
        burst = max(1.0, rate)
        with self._lock:
            bucket = self._buckets.setdefault(tenant, _Bucket(burst, now))
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * rate)
            bucket.stamp = now
            if bucket.tokens < 1.0:
                raise exhausted(f"rate limit: at most {rate:g} requests/s per tenant")
            bucket.tokens -= 1.0

    @contextmanager
    def call(self, tenant: str) -> Iterator[None]:
        """One in-flight call for the block (refused at once when over a limit)."""
        with self._lock:
            if self.closed:
                raise Refused(grpc.StatusCode.UNAVAILABLE, "the server is draining: retry on another replica")
            if self._in_flight >= self.config.max_concurrent_streams:
                raise exhausted(f"busy: at most {self.config.max_concurrent_streams} concurrent calls")
            if self._per_tenant.get(tenant, 0) >= self.config.max_calls_per_tenant:
                raise exhausted(f"busy: at most {self.config.max_calls_per_tenant} concurrent calls per tenant")
            self._in_flight += 1
            self._per_tenant[tenant] = self._per_tenant.get(tenant, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1
                self._per_tenant[tenant] -= 1
                if not self._per_tenant[tenant]:
                    del self._per_tenant[tenant]

    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

"""The bounded session cache: which sessions keep their KV state, leased one call at a time.

Keys are (tenant, session_id). A backend owns one SessionCache and says how to free a
session's state (`release`); the servicer leases a session for one call, so a backend
never sees two calls on the same KV state. What a session's context *is* (text or
token ids, checksums) is the servicer's business (cloud/planning.py); this file only
decides who stays and who goes.

Eviction is fair between tenants: a tenant at or over its share of the cache (capacity
divided by the tenants holding sessions) evicts its own least recently used idle
session; a tenant under its share evicts from the tenant furthest over its share. So a
tenant that floods the service with sessions pushes out its own, not its neighbours'.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator


@dataclass
class Session:
    """One session's state. `kv_tokens` are exactly the tokens whose KV `state` holds."""

    key: Hashable
    mode: str | None = None  # "text" or "tokens", set by the servicer on the first call
    context: Any = None  # text mode: bytes; token mode: list[int]
    kv_tokens: list[int] = field(default_factory=list)
    # True when the backend's last forward pass ended on kv_tokens[-1], so the next token
    # can be sampled without evaluating anything (e.g. right after a Sync).
    logits_ready: bool = False
    state: Any = None  # backend-specific KV holder (a sequence id, a DynamicCache, ...)
    busy: bool = False

    def forget_kv(self) -> None:
        """The KV no longer matches anything: the next call prefills from scratch."""
        self.kv_tokens, self.logits_ready = [], False


class SessionMissing(LookupError):
    """The session is not (or no longer) in the cache."""


class SessionBusyLimit(RuntimeError):
    """The tenant has too many sessions and none of them can be evicted right now."""


class Stopped(RuntimeError):
    """Waiting for a free session slot was stopped (client gone, deadline, or queue cap)."""


class SessionCache:
    """A bounded, tenant-fair LRU of sessions. Evicting a session frees its KV state.

    A session in use (leased) is never evicted; when every slot is in use, a new session
    waits for one to be released (until `should_stop` says to give up).
    """

    def __init__(self, capacity: int, *, release: Callable[[Session], None] = lambda s: None):
        if capacity < 1:
            raise ValueError("a session cache needs room for at least one session")
        self.capacity = capacity
        self._release = release
        self._sessions: OrderedDict[Hashable, Session] = OrderedDict()
        self._cond = threading.Condition()
        self.evictions = 0
        self.on_evict: Callable[[Hashable], None] = lambda key: None  # metrics hook

    def __len__(self) -> int:
        with self._cond:
            return len(self._sessions)

    def __contains__(self, key) -> bool:
        with self._cond:
            return key in self._sessions

    def count(self, tenant) -> int:
        with self._cond:
            return self._count(tenant)

    def _count(self, tenant) -> int:
        return sum(1 for k in self._sessions if k[0] == tenant)

    def _evict(self, key) -> None:
        session = self._sessions.pop(key)
        self.evictions += 1
        self._release(session)
        self.on_evict(key)

    def _evict_oldest_idle(self, tenant) -> bool:
        for key, session in self._sessions.items():  # oldest first
            if not session.busy and key[0] == tenant:
                self._evict(key)
                return True
        return False

    def _evict_fairly(self, tenant) -> bool:
        """Make room for one session of `tenant` (see the module docstring)."""
        held: dict[Any, int] = {}
        for key, session in self._sessions.items():
            held[key[0]] = held.get(key[0], 0) + 1
        tenants = set(held) | {tenant}
        share = max(1, self.capacity // len(tenants))
        if held.get(tenant, 0) >= share and self._evict_oldest_idle(tenant):
            return True
        # furthest over its share first; among equals, the tenant owning the oldest session
        for other in sorted(held, key=lambda t: -held[t]):
            if other != tenant and self._evict_oldest_idle(other):
                return True
        return self._evict_oldest_idle(tenant)

    @contextmanager
    def lease(self, key, *, create: bool, should_stop: Callable[[], bool] = lambda: False,
              per_tenant_limit: int | None = None) -> Iterator[Session]:
        """The session for `key`, for this caller alone until the block ends.

        create=False: SessionMissing when it is not cached. create=True: made when
        missing (evicting fairly when full, see the module docstring).
        """
        with self._cond:
            while True:
                if should_stop():
                    raise Stopped()
                session = self._sessions.get(key)
                if session is None:
                    if not create:
                        raise SessionMissing(key)
                    while per_tenant_limit is not None and self._count(key[0]) >= per_tenant_limit:
                        if not self._evict_oldest_idle(key[0]):  # the tenant's own oldest idle one
                            raise SessionBusyLimit(key[0])
                    if len(self._sessions) >= self.capacity and not self._evict_fairly(key[0]):
                        self._cond.wait(0.05)  # every slot busy: wait for a release
                        continue
                    session = Session(key=key)
                    self._sessions[key] = session
                if not session.busy:
                    break
                self._cond.wait(0.05)  # another call of this session is running
            session.busy = True
            self._sessions.move_to_end(key)
        try:
            yield session
        finally:
            with self._cond:
                session.busy = False
                if session.context is None and self._sessions.get(key) is session:
                    # A call that failed before the session had a context: nothing to keep.
                    del self._sessions[key]
                    self._release(session)
                self._cond.notify_all()

    def drop(self, key, *, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Forget a session (EndSession); waits while a call of it runs."""
        with self._cond:
            while key in self._sessions and self._sessions[key].busy:
                if should_stop():
                    raise Stopped()
                self._cond.wait(0.05)
            session = self._sessions.pop(key, None)
            if session is None:
                return False
            self._release(session)
            return True

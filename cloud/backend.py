"""The small interface every cloud backend implements, and the bounded session cache.

A backend turns token ids into more token ids. It keeps, per session, the tokens whose
KV state it holds, so that a later call evaluates only what differs from them (the
delta). What a session's context *is* (text or token ids, checksums, tenants) is the
server's business; the backend only sees token lists.

Threading: `generate`/`prefill` run in worker threads. The SessionCache hands a session
to one call at a time (a lease), so a backend never sees two calls on the same KV state.
"""

from __future__ import annotations

import abc
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterator

FINISH_LENGTH = "length"
FINISH_EOS = "eos"
FINISH_CANCELLED = "cancelled"
FINISH_DEADLINE = "deadline"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int = 0  # 0 = random


@dataclass
class Usage:
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    generate_s: float = 0.0
    queue_s: float = 0.0


@dataclass
class Session:
    """One session's state. `kv_tokens` are exactly the tokens whose KV `state` holds."""

    key: Hashable
    mode: str | None = None  # "text" or "tokens", set by the server on the first call
    context: Any = None  # text mode: bytes; token mode: list[int]
    kv_tokens: list[int] = field(default_factory=list)
    # True when the backend's last forward pass ended on kv_tokens[-1], so the next token
    # can be sampled without evaluating anything (e.g. right after a Sync).
    logits_ready: bool = False
    state: Any = None  # backend-specific KV holder (a llama_cpp.Llama, a DynamicCache, ...)
    busy: bool = False


class SessionMissing(LookupError):
    """The session is not (or no longer) in the cache."""


class SessionBusyLimit(RuntimeError):
    """The tenant has too many sessions and none of them can be evicted right now."""


class Stopped(RuntimeError):
    """Waiting for a free session slot was stopped (client gone or deadline)."""


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class SessionCache:
    """A bounded LRU of sessions. Evicting a session frees its KV state for reuse.

    Keys are (tenant, session_id). A session in use (leased) is never evicted; when every
    slot is in use, a new session waits for one to be released.
    """

    def __init__(self, capacity: int, *, release: Callable[[Session], None] = lambda s: None):
        if capacity < 1:
            raise ValueError("a session cache needs room for at least one session")
        self.capacity = capacity
        self._release = release
        self._sessions: OrderedDict[Hashable, Session] = OrderedDict()
        self._cond = threading.Condition()
        self.evictions = 0

    def __len__(self) -> int:
        with self._cond:
            return len(self._sessions)

    def __contains__(self, key) -> bool:
        with self._cond:
            return key in self._sessions

    def count(self, tenant) -> int:
        with self._cond:
            return sum(1 for k in self._sessions if k[0] == tenant)

    def _evict_one(self, tenant=None) -> bool:
        for key, session in self._sessions.items():  # oldest first
            if session.busy or (tenant is not None and key[0] != tenant):
                continue
            del self._sessions[key]
            self.evictions += 1
            self._release(session)
            return True
        return False

    @contextmanager
    def lease(self, key, *, create: bool, should_stop: Callable[[], bool] = lambda: False,
              per_tenant_limit: int | None = None) -> Iterator[Session]:
        """The session for `key`, for this caller alone until the block ends.

        create=False: SessionMissing when it is not cached. create=True: made when
        missing (evicting the least recently used idle session when full).
        """
        with self._cond:
            while True:
                if should_stop():
                    raise Stopped()
                session = self._sessions.get(key)
                if session is None:
                    if not create:
                        raise SessionMissing(key)
                    while per_tenant_limit is not None and self.count(key[0]) >= per_tenant_limit:
                        if not self._evict_one(tenant=key[0]):  # the tenant's own oldest idle one
                            raise SessionBusyLimit(key[0])
                    if len(self._sessions) >= self.capacity and not self._evict_one():
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

    def drop(self, key) -> bool:
        """Forget a session (EndSession); waits while a call of it runs."""
        with self._cond:
            while key in self._sessions and self._sessions[key].busy:
                self._cond.wait(0.05)
            session = self._sessions.pop(key, None)
            if session is None:
                return False
            self._release(session)
            return True


class Backend(abc.ABC):
    """What the server needs from a model engine."""

    name: str  # "llama.cpp" or "transformers"
    model_name: str
    fingerprint: str  # tokenizer fingerprint ("" = token mode unsupported)
    n_vocab: int
    n_ctx: int  # most tokens a session can hold (context + generated)
    sessions: SessionCache

    @abc.abstractmethod
    def tokenize(self, text: bytes) -> list[int]:
        """Token ids of a session's whole text context (with BOS when the model wants it)."""

    @abc.abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one generated token adds to the text."""

    @abc.abstractmethod
    def is_eos(self, token_id: int) -> bool: ...

    @abc.abstractmethod
    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        """Make the session's KV hold exactly `tokens`, evaluating only what differs."""

    @abc.abstractmethod
    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        """Prefill `tokens` (delta only) and write up to max_new_tokens tokens.

        emit(token_id) is called for each token as soon as it is sampled (EOS is not
        emitted). should_stop() is checked before each token and returns a finish reason
        to stop with (cancelled / deadline) or None. Returns (finish reason, generated
        tokens, usage); afterwards session.kv_tokens is a prefix of tokens + generated.
        """

    def close(self) -> None:
        pass


def timed() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start

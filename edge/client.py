"""The edge side of the wire: a client for the relay service, with sessions and a breaker.

Imports only grpc, protobuf and numpy (never torch). A CloudSession remembers what the
cloud holds for it, so each call sends only the delta (base_length + crc32 of what the
cloud already has). When the cloud cannot apply a delta (FAILED_PRECONDITION: evicted,
restarted, checksum mismatch) the session resends the whole prefix once. Every failure
becomes a CloudError with a short machine-readable reason; no call waits past its
deadline; a CircuitBreaker stops calling for a while after repeated failures.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import grpc
import numpy as np

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc
from relayllm.protos.delta import common_prefix, common_utf8_prefix

Piece = pb.Piece

# gRPC's own retries for the idempotent unary calls (Sync truncates to base_length before
# appending, so applying it twice gives the same context).
_SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "relayllm.v1.Relay", "method": m} for m in ("Info", "Sync", "EndSession")],
        "retryPolicy": {
            "maxAttempts": 3,
            "initialBackoff": "0.05s",
            "maxBackoff": "0.5s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }]
})

# Failures that say the cloud is unwell (they count for the breaker); refusals of a bad
# request do not.
_SICK = {"unreachable", "deadline", "broken_stream", "refused:INTERNAL", "refused:UNKNOWN",
         "refused:RESOURCE_EXHAUSTED", "refused:DATA_LOSS"}


class CloudError(Exception):
    """A cloud call failed. `.reason` is a short word: unreachable, deadline,
    broken_stream, circuit_open, cancelled, refused:<grpc code>, ..."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def _reason(err: grpc.RpcError, *, streaming_started: bool = False) -> str:
    code = err.code() if hasattr(err, "code") else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return "broken_stream" if streaming_started else "unreachable"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "deadline"
    if code == grpc.StatusCode.CANCELLED:
        return "cancelled"
    return f"refused:{code.name if code else 'UNKNOWN'}"


class CircuitBreaker:
    """Opens after `failures` consecutive failures; after `reset_s` it lets one probe
    (a health check) through, and closes again when the probe succeeds (on trial: one more
    failure reopens it).
    While open, `allow` answers at once: no request waits on a cloud known to be down."""

    def __init__(self, failures: int = 3, reset_s: float = 10.0):
        self.failures = failures
        self.reset_s = reset_s
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._probing = False
        self.opened = 0  # how many times it opened (for reports)

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if time.monotonic() - self._opened_at < self.reset_s else "half_open"

    def allow(self, probe=None) -> bool:
        """True when a call may go out. Half-open: one caller runs `probe()` (bool); the
        others are refused meanwhile, so a cloud coming back gets one probe, not one per
        caller. A good probe closes the breaker on trial (one more failure reopens it)."""
        with self._lock:
            if self._opened_at is None:
                return True
            if time.monotonic() - self._opened_at < self.reset_s or self._probing:
                return False
            self._probing = True
        ok = True
        if probe is not None:
            try:
                ok = bool(probe())
            except Exception:  # noqa: BLE001 - a failed probe is just "not yet"
                ok = False
        with self._lock:
            self._probing = False
            if ok:
                self._opened_at = None
                self._count = self.failures - 1  # on trial: the next failure opens it again
            else:
                self._opened_at = time.monotonic()  # stay open for another reset_s
        return ok

    def record_success(self) -> None:
        with self._lock:
            self._count = 0
            self._opened_at = None

    def record_failure(self) -> None:
        with self._lock:
            self._count += 1
            if self._count >= self.failures or self._opened_at is not None:
                if self._opened_at is None:
                    self.opened += 1
                self._opened_at = time.monotonic()


class CloudClient:
    def __init__(self, target: str, *, token: str | None = None, root_certificates: bytes | None = None,
                 deadline_s: float = 10.0, breaker: CircuitBreaker | None = None):
        self.target = target
        self.deadline_s = deadline_s
        self.breaker = breaker if breaker is not None else CircuitBreaker(failures=3, reset_s=10.0)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        # Reconnect soon after the cloud comes back (gRPC's default backoff grows to 2 min).
        options = [("grpc.service_config", _SERVICE_CONFIG), ("grpc.enable_retries", 1),
                   ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
                   ("grpc.max_reconnect_backoff_ms", 2000)]
        if root_certificates is not None:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self.channel = grpc.insecure_channel(target, options=options)
        self.stub = relay_pb2_grpc.RelayStub(self.channel)
        self._info: pb.InfoReply | None = None

    def info(self, *, timeout_s: float | None = None) -> pb.InfoReply:
        """What the service runs (cached after the first success)."""
        if self._info is None:
            # the first contact with the cloud: it goes through the breaker like any call,
            # or an unreachable cloud would cost a full connection attempt every time
            if not self.breaker.allow(probe=self.healthy):
                raise CloudError("circuit_open", "the cloud failed repeatedly; calls resume after a health check")
            timeout = self.deadline_s if timeout_s is None else max(0.001, min(timeout_s, self.deadline_s))
            try:
                self._info = self.stub.Info(pb.InfoRequest(), timeout=timeout, metadata=self.metadata)
            except grpc.RpcError as err:
                reason = _reason(err)
                if reason in _SICK:
                    self.breaker.record_failure()
                raise CloudError(reason, err.details() or "") from None
            self.breaker.record_success()
        return self._info

    def healthy(self, timeout_s: float = 1.0) -> bool:
        """The standard health check (used by the breaker's probe)."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(service="relayllm.v1.Relay"),
                timeout=min(timeout_s, self.deadline_s), metadata=self.metadata, wait_for_ready=True)
        except grpc.RpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def session(self) -> "CloudSession":
        return CloudSession(self, secrets.token_hex(12))

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SessionStats:
    calls: int = 0
    resends: int = 0
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    bytes_sent: int = 0


def _crc(held) -> int:
    if isinstance(held, (bytes, bytearray)):
        return zlib.crc32(held)
    return zlib.crc32(np.asarray(held, dtype="<u4").tobytes())


class CloudSession:
    """One conversation with the cloud, which keeps its KV cache between calls."""

    def __init__(self, client: CloudClient, session_id: str):
        self.client = client
        self.id = session_id
        self.stats = SessionStats()
        self.last_done: pb.Done | None = None
        self._mode: str | None = None
        self._held = None  # what the cloud holds for us (bytes or list[int]); None = unknown
        self._call = None  # the Help call in flight, for cancel()

    # -- deltas ------------------------------------------------------------------------
    def _whole(self, text, tokens):
        if (text is None) == (tokens is None):
            raise ValueError("pass exactly one of text= or tokens=")
        if tokens is not None:
            return "tokens", [int(t) for t in tokens]
        return "text", text.encode("utf-8")

    def _context(self, mode: str, whole, *, full: bool, deadline: float) -> pb.Context:
        base = 0
        if not full and self._held is not None and self._mode == mode:
            base = (common_utf8_prefix if mode == "text" else common_prefix)(self._held, whole)
        context = pb.Context(base_length=base, base_crc32=_crc(self._held[:base]) if base else 0)
        if mode == "text":
            context.text = whole[base:].decode("utf-8")
        else:
            context.tokens.ids.extend(whole[base:])
            context.tokenizer_fingerprint = self.client.info(timeout_s=deadline - time.monotonic()).tokenizer_fingerprint
        return context

    def _settle(self, mode: str, whole, generated, length: int, crc: int) -> None:
        held = whole + generated
        if len(held) != length or _crc(held) != crc:
            held = None  # we do not know exactly what the cloud holds: next call resends
        self._mode, self._held = mode, held

    def _deadline(self, deadline_s: float | None) -> float:
        return time.monotonic() + (deadline_s if deadline_s is not None else self.client.deadline_s)

    def _check_breaker(self) -> None:
        if not self.client.breaker.allow(probe=self.client.healthy):
            raise CloudError("circuit_open", "the cloud failed repeatedly; calls resume after a health check")

    def _fail(self, reason: str, detail: str = "") -> CloudError:
        if reason in _SICK:
            self.client.breaker.record_failure()
        return CloudError(reason, detail)

    # -- calls --------------------------------------------------------------------------
    def help(self, *, text: str | None = None, tokens: Sequence[int] | None = None, max_tokens: int,
             temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, seed: int = 0,
             deadline_s: float | None = None, stopped=None) -> Iterator[pb.Piece]:
        """Stream the LLM's continuation of the whole context `text` (or `tokens`).

        Yields Pieces as they arrive; .last_done holds the Done afterwards. Raises
        CloudError after yielding whatever arrived. `stopped` (a callable) is asked once the
        call is registered for cancel(): a cancel that came while the call was being set up,
        when there was no call yet to cut, is honoured instead of lost.
        """
        mode, whole = self._whole(text, tokens)
        deadline = self._deadline(deadline_s)
        self._check_breaker()
        self.last_done = None
        sampling = pb.Sampling(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
        for attempt in range(2):
            # may raise CloudError from info(), which has told the breaker itself
            context = self._context(mode, whole, full=attempt > 0, deadline=deadline)
            request = pb.HelpRequest(session_id=self.id, context=context, max_tokens=max_tokens, sampling=sampling)
            self.stats.calls += 1
            self.stats.bytes_sent += request.ByteSize()
            self._held = None  # until the Done says what the cloud holds now
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("deadline", "no time left for the call")
            call = self._call = self.client.stub.Help(request, timeout=remaining, metadata=self.client.metadata)
            if stopped is not None and stopped():
                call.cancel()  # cancel() ran before self._call was set (the caller sets its flag first)
            generated_text: list[str] = []
            generated_ids: list[int] = []
            done = None
            try:
                for reply in call:
                    if reply.HasField("piece"):
                        generated_text.append(reply.piece.text)
                        generated_ids.append(reply.piece.token_id)
                        yield reply.piece
                    elif reply.HasField("done"):
                        done = reply.done
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION and not generated_ids and attempt == 0:
                    self.stats.resends += 1
                    continue  # the cloud cannot apply the delta: resend the whole prefix once
                raise self._fail(_reason(err, streaming_started=bool(generated_ids)), err.details() or "") from None
            finally:
                call.cancel()  # no-op when finished; stops generation when the caller stops reading
                self._call = None
            if done is None:
                raise self._fail("broken_stream", "the stream ended without Done")
            self.last_done = done
            self.stats.prefilled_tokens += done.usage.prefilled_tokens
            self.stats.reused_tokens += done.usage.reused_tokens
            generated = "".join(generated_text).encode("utf-8") if mode == "text" else generated_ids
            self._settle(mode, whole, generated, done.session_length, done.session_crc32)
            self.client.breaker.record_success()
            return
        raise self._fail("refused:FAILED_PRECONDITION", "the cloud refused the whole prefix too")

    def cancel(self) -> None:
        """Cancel the Help call in flight now, from any thread: its stream ends at once
        with CloudError("cancelled") instead of waiting for the deadline."""
        call = self._call
        if call is not None:
            call.cancel()

    def sync(self, *, text: str | None = None, tokens: Sequence[int] | None = None,
             deadline_s: float | None = None) -> None:
        """Send the context written so far without asking for tokens (warms the cloud's KV)."""
        mode, whole = self._whole(text, tokens)
        deadline = self._deadline(deadline_s)
        self._check_breaker()
        for attempt in range(2):
            # may raise CloudError from info(), which has told the breaker itself
            context = self._context(mode, whole, full=attempt > 0, deadline=deadline)
            request = pb.SyncRequest(session_id=self.id, context=context)
            self.stats.calls += 1
            self.stats.bytes_sent += request.ByteSize()
            self._held = None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fail("deadline", "no time left for the call")
            try:
                reply = self.client.stub.Sync(request, timeout=remaining, metadata=self.client.metadata)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.FAILED_PRECONDITION and attempt == 0:
                    self.stats.resends += 1
                    continue
                raise self._fail(_reason(err), err.details() or "") from None
            self.stats.prefilled_tokens += reply.usage.prefilled_tokens
            self.stats.reused_tokens += reply.usage.reused_tokens
            self._settle(mode, whole, b"" if mode == "text" else [], reply.session_length, reply.session_crc32)
            self.client.breaker.record_success()
            return
        raise self._fail("refused:FAILED_PRECONDITION", "the cloud refused the whole prefix too")

    def end(self) -> None:
        """Tell the cloud to forget this session (best effort: errors are ignored)."""
        self._held = None
        try:
            self.client.stub.EndSession(pb.EndSessionRequest(session_id=self.id),
                                        timeout=min(1.0, self.client.deadline_s), metadata=self.client.metadata)
        except grpc.RpcError:
            pass

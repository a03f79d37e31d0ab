"""The relay gRPC service (grpc.aio): Help, Sync, EndSession, Info, health, reflection.

Every request field is checked before any model work; refusals carry a status code and
a message that says which field (see protos/relay.proto). Generation runs in a worker
thread so that the event loop stays free; it stops between tokens when the client
cancels or the deadline passes. Sessions are keyed by (tenant, session_id): a tenant can
never reach another tenant's session. Logs never carry prompt text or token ids.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import math
import re
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from relayllm.cloud.backend import (
    FINISH_CANCELLED,
    FINISH_DEADLINE,
    Backend,
    SamplingParams,
    SessionBusyLimit,
    SessionMissing,
    Stopped,
    Usage,
)
from relayllm.protos import relay_pb2 as pb

log = logging.getLogger("relayllm.cloud")

SERVICE = "relayllm.v1.Relay"
VERSION = "relayllm.v1 0.1.0"
SESSION_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")
FINISH = {
    "length": pb.FINISH_REASON_LENGTH,
    "eos": pb.FINISH_REASON_EOS,
    FINISH_CANCELLED: pb.FINISH_REASON_CANCELLED,
    FINISH_DEADLINE: pb.FINISH_REASON_DEADLINE,
}


@dataclass
class ServerConfig:
    max_tokens_per_call: int = 256
    max_context_tokens: int = 4096
    max_sessions: int = 64
    tokens: dict[str, str] | None = None  # bearer token -> tenant; None = no auth
    tls_cert: bytes | None = None  # PEM
    tls_key: bytes | None = None
    max_concurrent_streams: int = 32
    max_message_bytes: int = 1 << 20
    max_sessions_per_tenant: int = 32
    rate_per_s: float | None = None  # requests per second per tenant (token bucket); None = off


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> Refused:
    return Refused(grpc.StatusCode.FAILED_PRECONDITION, message + "; resend the whole prefix (base_length=0)")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


@dataclass
class _Plan:
    """A checked request: which session, and what its context becomes."""

    key: tuple
    mode: str
    base_length: int
    new_context: bytes | list[int]  # the whole context after the delta
    create: bool


class _BadMessage:
    def __init__(self, error: str):
        self.error = error


def _lenient(message_type):
    """A request deserializer that turns unparsable bytes (e.g. invalid UTF-8 in a string
    field) into a value the handler refuses with INVALID_ARGUMENT instead of INTERNAL."""

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return _BadMessage(str(err) or "undecodable message")

    return parse


def context_crc(mode: str, context) -> int:
    return zlib.crc32(context if mode == "text" else token_bytes_le(context))


def token_bytes_le(ids) -> bytes:
    import numpy as np

    return np.asarray(ids, dtype="<u4").tobytes()


class RelayServicer:
    def __init__(self, backend: Backend, config: ServerConfig):
        self.backend = backend
        self.config = config
        self.max_context = min(config.max_context_tokens, backend.n_ctx)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent_streams + 4,
                                           thread_name_prefix="relay-gen")
        self._streams = 0
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    # -- checks ------------------------------------------------------------------------
    def _tenant(self, context) -> str:
        if self.config.tokens is None:
            return ""
        metadata = dict(context.invocation_metadata() or ())
        header = metadata.get("authorization", "")
        if not header:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "missing bearer token (metadata 'authorization: Bearer T')")
        scheme, _, token = header.partition(" ")
        tenant = self.config.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if tenant is None:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        return tenant

    def _rate(self, tenant: str) -> None:
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
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, f"rate limit: at most {rate:g} requests/s per tenant")
            bucket.tokens -= 1.0

    def _plan(self, tenant: str, session_id: str, ctx: pb.Context, *, extra_tokens: int) -> _Plan:
        if not SESSION_ID.fullmatch(session_id):
            raise invalid("session_id must be 1..128 characters of [A-Za-z0-9_.:-]")
        key = (tenant, session_id)
        mode = "tokens" if ctx.WhichOneof("delta") == "tokens" else "text"
        if mode == "tokens":
            fingerprint = self.backend.fingerprint
            if not fingerprint:
                raise precondition("token mode is not supported by this backend (no tokenizer fingerprint); use text")
            if ctx.tokenizer_fingerprint != fingerprint:
                raise precondition("tokenizer_fingerprint does not match this service's tokenizer (see Info)")
            delta = list(ctx.tokens.ids)
            if any(i >= self.backend.n_vocab for i in delta):
                raise invalid(f"token ids must be below the vocabulary size {self.backend.n_vocab}")
            if len(delta) + extra_tokens > self.max_context:
                raise invalid(f"context too long: more than {self.max_context} tokens with max_tokens")
        else:
            delta = ctx.text.encode("utf-8")
            # Every token is at least one byte... except that llama.cpp may add BOS; a
            # cheap bound before tokenizing.
            if len(delta) > 16 * self.max_context:
                raise invalid(f"context too long: the limit is {self.max_context} tokens")
        base = ctx.base_length
        if base == 0:
            return _Plan(key, mode, 0, delta, create=True)
        if key not in self.backend.sessions:
            raise precondition("unknown or evicted session")
        return _Plan(key, mode, base, delta, create=False)

    def _apply(self, plan: _Plan, session, base_crc: int):
        """The session's new whole context, checked against what it holds (under its lease)."""
        if plan.base_length == 0:
            return plan.new_context
        held = session.context
        if held is None:
            raise precondition("unknown or evicted session")
        if session.mode != plan.mode:
            raise precondition(f"the session is in {session.mode} mode, the request in {plan.mode} mode")
        if plan.base_length > len(held):
            raise precondition(f"base_length {plan.base_length} is past the session's length {len(held)}")
        base = held[: plan.base_length]
        if context_crc(plan.mode, base) != base_crc:
            raise precondition("base_crc32 does not match the session's context")
        if plan.mode == "text":
            whole = base + plan.new_context
            try:
                whole.decode("utf-8")
            except UnicodeDecodeError:
                raise precondition("base_length splits a UTF-8 character") from None
            return whole
        return list(base) + plan.new_context

    def _tokens(self, mode: str, whole, extra_tokens: int) -> list[int]:
        tokens = self.backend.tokenize(whole) if mode == "text" else list(whole)
        if len(tokens) + extra_tokens > self.max_context:
            raise invalid(f"context too long: {len(tokens)} tokens + max_tokens {extra_tokens} "
                          f"is over the limit of {self.max_context}")
        if not tokens:
            raise invalid("the context is empty: send some text or tokens to continue")
        return tokens

    def _sampling(self, s: pb.Sampling) -> SamplingParams:
        if not math.isfinite(s.temperature) or not 0.0 <= s.temperature <= 2.0:
            raise invalid("sampling.temperature must be in [0, 2] (0 = greedy)")
        if not math.isfinite(s.top_p) or not 0.0 <= s.top_p <= 1.0:
            raise invalid("sampling.top_p must be in (0, 1] (0 means 1)")
        return SamplingParams(temperature=float(s.temperature), top_p=float(s.top_p) or 1.0,
                              top_k=int(s.top_k), seed=int(s.seed) % (1 << 32))

    def _enter_stream(self) -> None:
        with self._lock:
            if self._streams >= self.config.max_concurrent_streams:
                raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"busy: at most {self.config.max_concurrent_streams} concurrent calls")
            self._streams += 1

    def _leave_stream(self) -> None:
        with self._lock:
            self._streams -= 1

    def _lease(self, plan: _Plan, stop):
        return self.backend.sessions.lease(plan.key, create=plan.create, should_stop=stop,
                                           per_tenant_limit=self.config.max_sessions_per_tenant)

    # -- the work, in a worker thread ---------------------------------------------------------
    def _run_help(self, plan: _Plan, request: pb.HelpRequest, sampling: SamplingParams, stop, put) -> pb.Done:
        start = time.perf_counter()
        try:
            with self._lease(plan, lambda: stop() is not None) as session:
                queue_s = time.perf_counter() - start
                whole = self._apply(plan, session, request.context.base_crc32)
                tokens = self._tokens(plan.mode, whole, request.max_tokens)
                decoder = codecs.getincrementaldecoder("utf-8")("replace")
                text_out: list[bytes] = []
                ids_out: list[int] = []

                def emit(token_id: int) -> None:
                    text = decoder.decode(self.backend.token_bytes(token_id))
                    text_out.append(text.encode("utf-8"))
                    ids_out.append(token_id)
                    put(pb.HelpReply(piece=pb.Piece(token_id=token_id, text=text)))

                # The session's context changes now: if generation fails half way, the
                # session is reset rather than left with a context its KV does not match.
                session.mode, session.context = plan.mode, None
                try:
                    finish, generated, usage = self.backend.generate(
                        session, tokens, max_new_tokens=request.max_tokens, sampling=sampling,
                        should_stop=stop, emit=emit)
                except BaseException:
                    session.kv_tokens, session.logits_ready = [], False
                    raise
                if plan.mode == "text":
                    # What the client saw: the context plus the streamed texts.
                    session.context = whole + b"".join(text_out)
                else:
                    session.context = list(whole) + ids_out
        except (SessionMissing,):
            raise precondition("unknown or evicted session") from None
        except SessionBusyLimit:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"at most {self.config.max_sessions_per_tenant} sessions per tenant, all busy") from None
        except Stopped:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "stopped while waiting for a free session slot") from None
        usage.queue_s = queue_s
        return pb.Done(finish_reason=FINISH[finish], usage=self._usage(usage, time.perf_counter() - start),
                       session_length=len(session.context),
                       session_crc32=context_crc(plan.mode, session.context))

    def _run_sync(self, plan: _Plan, request: pb.SyncRequest, stop) -> pb.SyncReply:
        start = time.perf_counter()
        try:
            with self._lease(plan, lambda: stop() is not None) as session:
                queue_s = time.perf_counter() - start
                whole = self._apply(plan, session, request.context.base_crc32)
                tokens = self._tokens(plan.mode, whole, 0)
                session.mode, session.context = plan.mode, None
                try:
                    usage = self.backend.prefill(session, tokens)
                except BaseException:
                    session.kv_tokens, session.logits_ready = [], False
                    raise
                session.context = whole
        except SessionMissing:
            raise precondition("unknown or evicted session") from None
        except SessionBusyLimit:
            raise Refused(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"at most {self.config.max_sessions_per_tenant} sessions per tenant, all busy") from None
        except Stopped:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "stopped while waiting for a free session slot") from None
        usage.queue_s = queue_s
        return pb.SyncReply(usage=self._usage(usage, time.perf_counter() - start),
                            session_length=len(session.context), session_crc32=context_crc(plan.mode, session.context))

    @staticmethod
    def _usage(u: Usage, server_s: float) -> pb.Usage:
        return pb.Usage(prefilled_tokens=u.prefilled_tokens, reused_tokens=u.reused_tokens,
                        generated_tokens=u.generated_tokens, server_seconds=server_s,
                        prefill_seconds=u.prefill_s, generate_seconds=u.generate_s, queue_seconds=u.queue_s)

    # -- RPCs --------------------------------------------------------------------------------
    async def Help(self, request, context):
        started = time.perf_counter()
        stop_reason: list[str] = []
        deadline = None
        try:
            tenant = self._tenant(context)
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed HelpRequest ({request.error}); strings must be valid UTF-8")
            self._rate(tenant)
            if not 1 <= request.max_tokens <= self.config.max_tokens_per_call:
                raise invalid(f"max_tokens must be in 1..{self.config.max_tokens_per_call}")
            sampling = self._sampling(request.sampling)
            plan = self._plan(tenant, request.session_id, request.context, extra_tokens=request.max_tokens)
            self._enter_stream()
        except Refused as err:
            await context.abort(err.code, err.message)
            return
        remaining = context.time_remaining()
        if remaining is not None:
            deadline = time.monotonic() + remaining

        def stop():
            if stop_reason:
                return stop_reason[0]
            if deadline is not None and time.monotonic() >= deadline:
                return FINISH_DEADLINE
            return None

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def put(item):
            loop.call_soon_threadsafe(queue.put_nowait, item)

        def work():
            try:
                return self._run_help(plan, request, sampling, stop, put)
            finally:
                put(None)

        future = loop.run_in_executor(self.executor, work)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                await context.write(item)
            done = await future
        except asyncio.CancelledError:
            stop_reason.append(FINISH_CANCELLED)  # client gone or deadline: generation stops
            raise
        except Refused as err:
            log.info("help refused: %s %s", err.code.name, err.message)
            await context.abort(err.code, err.message)
            return
        finally:
            if not stop_reason:
                stop_reason.append(FINISH_CANCELLED)  # in case the worker still runs
            self._leave_stream()
        if done.finish_reason == pb.FINISH_REASON_DEADLINE:
            log.info("help stopped at the deadline after %d tokens", done.usage.generated_tokens)
        await context.write(pb.HelpReply(done=done))
        log.info("help: session=%s prefilled=%d reused=%d generated=%d finish=%s %.3fs",
                 request.session_id, done.usage.prefilled_tokens, done.usage.reused_tokens,
                 done.usage.generated_tokens, pb.FinishReason.Name(done.finish_reason), time.perf_counter() - started)

    async def Sync(self, request, context):
        try:
            tenant = self._tenant(context)
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed SyncRequest ({request.error}); strings must be valid UTF-8")
            self._rate(tenant)
            plan = self._plan(tenant, request.session_id, request.context, extra_tokens=0)
            self._enter_stream()
        except Refused as err:
            await context.abort(err.code, err.message)
            return
        stopped: list[str] = []
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def stop():
            if stopped:
                return stopped[0]
            if deadline is not None and time.monotonic() >= deadline:
                return FINISH_DEADLINE
            return None

        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.executor, self._run_sync, plan, request, stop)
        except asyncio.CancelledError:
            stopped.append(FINISH_CANCELLED)
            raise
        except Refused as err:
            await context.abort(err.code, err.message)
        finally:
            self._leave_stream()

    async def EndSession(self, request, context):
        try:
            tenant = self._tenant(context)
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed EndSessionRequest ({request.error})")
            if not SESSION_ID.fullmatch(request.session_id):
                raise invalid("session_id must be 1..128 characters of [A-Za-z0-9_.:-]")
        except Refused as err:
            await context.abort(err.code, err.message)
            return
        loop = asyncio.get_running_loop()
        existed = await loop.run_in_executor(self.executor, self.backend.sessions.drop, (tenant, request.session_id))
        return pb.EndSessionReply(existed=existed)

    async def Info(self, request, context):
        try:
            self._tenant(context)
        except Refused as err:
            await context.abort(err.code, err.message)
            return
        return pb.InfoReply(model=self.backend.model_name, backend=self.backend.name,
                            tokenizer_fingerprint=self.backend.fingerprint,
                            max_tokens_per_call=self.config.max_tokens_per_call,
                            max_context_tokens=self.max_context,
                            max_sessions=min(self.config.max_sessions, self.backend.sessions.capacity),
                            version=VERSION)


def _handlers(servicer: RelayServicer) -> grpc.GenericRpcHandler:
    def unary(fn, req):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=_lenient(req),
                                                   response_serializer=lambda m: m.SerializeToString())

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Help": grpc.unary_stream_rpc_method_handler(servicer.Help, request_deserializer=_lenient(pb.HelpRequest),
                                                     response_serializer=lambda m: m.SerializeToString()),
        "Sync": unary(servicer.Sync, pb.SyncRequest),
        "EndSession": unary(servicer.EndSession, pb.EndSessionRequest),
        "Info": unary(servicer.Info, pb.InfoRequest),
    })


async def serve(backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                config: ServerConfig | None = None) -> tuple[grpc.aio.Server, int]:
    """Build and start the aio server; returns it and the bound port."""
    config = config or ServerConfig()
    servicer = RelayServicer(backend, config)
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    server.add_generic_rpc_handlers((_handlers(servicer),))
    health_servicer = health.aio.HealthServicer() if hasattr(health, "aio") else health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (pb.DESCRIPTOR.services_by_name["Relay"].full_name, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{host}:{port}"
    if config.tls_cert is not None:
        if config.tls_key is None:
            raise ValueError("TLS needs both a certificate and a key")
        bound = server.add_secure_port(address, grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)]))
    else:
        bound = server.add_insecure_port(address)
    if bound == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    for name in ("", SERVICE):
        await _set_health(health_servicer, name, health_pb2.HealthCheckResponse.SERVING)
    server._relay_servicer = servicer  # kept alive with the server
    return server, bound


async def _set_health(servicer, name, status):
    result = servicer.set(name, status)
    if asyncio.iscoroutine(result):
        await result


class ServerThread:
    """The aio server in a background thread with its own event loop (tests, demos, CLI)."""

    def __init__(self, backend: Backend, *, host: str = "127.0.0.1", port: int = 0,
                 config: ServerConfig | None = None):
        self.backend = backend
        self.host = host
        self.config = config or ServerConfig()
        self._requested_port = port
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self.start()

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "ServerThread":
        ready = threading.Event()
        failure: list[BaseException] = []
        self._stopped.clear()

        def main():
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server, self.port = loop.run_until_complete(
                    serve(self.backend, host=self.host, port=self.port or self._requested_port, config=self.config))
            except BaseException as err:  # noqa: BLE001 - reported to the starting thread
                failure.append(err)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()  # until stop() has stopped the server and then the loop
            finally:
                servicer = getattr(self._server, "_relay_servicer", None)
                if servicer is not None:
                    servicer.executor.shutdown(wait=False, cancel_futures=True)
                loop.close()
                self._stopped.set()

        self._thread = threading.Thread(target=main, name="relay-server", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def stop(self, grace: float | None = None) -> None:
        """Stop serving; grace=None cancels every call at once (a crash, as seen by clients)."""
        if self._server is None or self._loop is None or self._loop.is_closed():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._server.stop(grace), self._loop).result(timeout=30)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._server = None

    def restart(self) -> "ServerThread":
        """Stop, then serve again on the same port with the same backend (caches kept)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

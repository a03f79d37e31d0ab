"""RelayServicer: the Relay RPCs (Help, Sync, EndSession, Info) between protobuf and a backend.

Each handler does the same four things: admit the call (cloud/admission.py: tenant, rate,
in-flight limits), check the request (cloud/planning.py), run the model work in a worker
thread under a fair turn and the session's lease, and convert the result back to protobuf.
The event loop never runs model code; generation stops between tokens when the client
cancels, its deadline passes, or the server's own cap on a call (max_call_s) is reached.
Logs carry sizes, timings and statuses, never prompt text, token ids or credentials.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata as _metadata

import grpc
from google.protobuf.message import DecodeError

from relayllm.cloud.admission import Admission, QueueTimeout
from relayllm.cloud.backends.base import FINISH_CANCELLED, FINISH_DEADLINE, Backend, Usage
from relayllm.cloud.config import ServerConfig
from relayllm.cloud.metrics import Metrics
from relayllm.cloud.planning import (Refused, apply, check_session_id, context_crc, exhausted, invalid, plan,
                                     precondition, sampling_params, tokens_for)
from relayllm.cloud.sessions import SessionBusyLimit, SessionMissing, Stopped
from relayllm.protos import relay_pb2 as pb

log = logging.getLogger("relayllm.cloud")

SERVICE = "relayllm.v1.Relay"
FINISH = {
    "length": pb.FINISH_REASON_LENGTH,
    "eos": pb.FINISH_REASON_EOS,
    FINISH_CANCELLED: pb.FINISH_REASON_CANCELLED,
    FINISH_DEADLINE: pb.FINISH_REASON_DEADLINE,
}


def package_version() -> str:
    try:
        return _metadata.version("relayllm")
    except _metadata.PackageNotFoundError:
        return "unknown"


VERSION = f"relayllm.v1 {package_version()}"


class _BadMessage:
    def __init__(self, error: str):
        self.error = error


def lenient(message_type):
    """A request deserializer that turns unparsable bytes (e.g. invalid UTF-8 in a string
    field) into a value the handler refuses with INVALID_ARGUMENT instead of INTERNAL."""

    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except DecodeError as err:
            return _BadMessage(str(err) or "undecodable message")

    return parse


class _Stop:
    """Why model work should stop now: cancelled, or past the client's or the server's deadline."""

    def __init__(self, context, max_call_s: float):
        remaining = context.time_remaining()
        self.deadline = time.monotonic() + (max_call_s if remaining is None else min(remaining, max_call_s))
        self.reason: str | None = None

    def __call__(self) -> str | None:
        if self.reason:
            return self.reason
        return FINISH_DEADLINE if time.monotonic() >= self.deadline else None

    def cancel(self) -> None:
        self.reason = self.reason or FINISH_CANCELLED


class _Mailbox:
    """Replies handed from a worker thread to the event loop. A put wakes the loop only when
    no wake is pending (one wake of the loop per batch of replies, not one per token): each
    wake is a write to the loop's self-pipe and a turn of the loop, Python work that competes
    with llama.cpp's threads for the cores while the engine decodes."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop, self._items, self._lock = loop, [], threading.Lock()
        self._ready = asyncio.Event()
        self._woken = False

    def put(self, item) -> None:  # any thread
        with self._lock:
            self._items.append(item)
            if self._woken:
                return
            self._woken = True
        self._loop.call_soon_threadsafe(self._ready.set)

    async def take(self) -> list:  # the event loop: every reply put since the last take, in order
        await self._ready.wait()
        with self._lock:
            items, self._items, self._woken = self._items, [], False
            self._ready.clear()
        return items


class RelayServicer:
    def __init__(self, backend: Backend, config: ServerConfig, metrics: Metrics | None = None):
        self.backend = backend
        self.config = config
        self.metrics = metrics or Metrics(None)
        self.max_context = min(config.max_context_tokens, backend.n_ctx)
        self.admission = Admission(config, model_slots=backend.sessions.capacity)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrent_streams + 4,
                                           thread_name_prefix="relay-gen")
        backend.sessions.on_evict = lambda key: self.metrics.evicted(key[0])

    # -- the work, in a worker thread ---------------------------------------------------------
    def _session_work(self, tenant: str, plan_, stop: _Stop, work):
        """Run work(session, queue_s) under a fair turn and the session's lease; map waits to statuses."""
        start = time.perf_counter()
        halted = lambda: stop() is not None  # noqa: E731
        try:
            with self.admission.gate.turn(tenant, should_stop=halted, timeout_s=self.config.max_queue_s), \
                    self.backend.sessions.lease(plan_.key, create=plan_.create, should_stop=halted,
                                                per_tenant_limit=self.config.max_sessions_per_tenant) as session:
                return work(session, time.perf_counter() - start)
        except SessionMissing:
            raise precondition("unknown or evicted session") from None
        except SessionBusyLimit:
            raise exhausted(f"at most {self.config.max_sessions_per_tenant} sessions per tenant, all busy") from None
        except QueueTimeout:
            raise exhausted(f"no free model slot within {self.config.max_queue_s:g} s; try again later") from None
        except Stopped:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "stopped while waiting for a free session slot") from None

    def _run_help(self, tenant, plan_, request: pb.HelpRequest, sampling, stop: _Stop, put) -> pb.Done:
        start = time.perf_counter()

        def work(session, queue_s):
            whole = apply(plan_, session, request.context.base_crc32)
            tokens = tokens_for(self.backend, self.max_context, plan_.mode, whole, request.max_tokens)
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            text_out: list[bytes] = []
            ids_out: list[int] = []

            def emit(token_id: int) -> None:
                text = decoder.decode(self.backend.token_bytes(token_id))
                text_out.append(text.encode("utf-8"))
                ids_out.append(token_id)
                put(pb.HelpReply(piece=pb.Piece(token_id=token_id, text=text)))

            # The session's context changes now: if generation fails half way, the session
            # is reset rather than left with a context its KV does not match.
            session.mode, session.context = plan_.mode, None
            try:
                finish, _, usage = self.backend.generate(session, tokens, max_new_tokens=request.max_tokens,
                                                         sampling=sampling, should_stop=stop, emit=emit)
            except BaseException:
                session.forget_kv()
                raise
            # What the client saw: the context plus the streamed texts (or ids).
            session.context = whole + b"".join(text_out) if plan_.mode == "text" else list(whole) + ids_out
            usage.queue_s = queue_s
            return pb.Done(finish_reason=FINISH[finish], usage=self._usage(usage, time.perf_counter() - start),
                           session_length=len(session.context),
                           session_crc32=context_crc(plan_.mode, session.context))

        return self._session_work(tenant, plan_, stop, work)

    def _run_sync(self, tenant, plan_, request: pb.SyncRequest, stop: _Stop) -> pb.SyncReply:
        start = time.perf_counter()

        def work(session, queue_s):
            whole = apply(plan_, session, request.context.base_crc32)
            tokens = tokens_for(self.backend, self.max_context, plan_.mode, whole, 0)
            session.mode, session.context = plan_.mode, None
            try:
                usage = self.backend.prefill(session, tokens)
            except BaseException:
                session.forget_kv()
                raise
            session.context = whole
            usage.queue_s = queue_s
            return pb.SyncReply(usage=self._usage(usage, time.perf_counter() - start),
                                session_length=len(whole), session_crc32=context_crc(plan_.mode, whole))

        return self._session_work(tenant, plan_, stop, work)

    @staticmethod
    def _usage(u: Usage, server_s: float) -> pb.Usage:
        return pb.Usage(prefilled_tokens=u.prefilled_tokens, reused_tokens=u.reused_tokens,
                        generated_tokens=u.generated_tokens, server_seconds=server_s,
                        prefill_seconds=u.prefill_s, generate_seconds=u.generate_s, queue_seconds=u.queue_s)

    # -- RPCs --------------------------------------------------------------------------------
    async def _abort(self, context, method: str, tenant: str, err: Refused):
        self.metrics.call(method, tenant, err.code.name, None)
        await context.abort(err.code, err.message)

    async def Help(self, request, context):
        started = time.perf_counter()
        tenant = ""
        try:
            tenant = self.admission.tenant(context.invocation_metadata())
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed HelpRequest ({request.error}); strings must be valid UTF-8")
            self.admission.rate(tenant)
            if not 1 <= request.max_tokens <= self.config.max_tokens_per_call:
                raise invalid(f"max_tokens must be in 1..{self.config.max_tokens_per_call}")
            sampling = sampling_params(request.sampling)
            plan_ = plan(self.backend, self.max_context, tenant, request.session_id, request.context,
                         extra_tokens=request.max_tokens)
            admitted = self.admission.call(tenant)
            admitted.__enter__()
        except Refused as err:
            await self._abort(context, "Help", tenant, err)
            return
        stop = _Stop(context, self.config.max_call_s)
        loop = asyncio.get_running_loop()
        replies = _Mailbox(loop)

        def work():
            try:
                return self._run_help(tenant, plan_, request, sampling, stop, replies.put)
            finally:
                replies.put(None)

        future = loop.run_in_executor(self.executor, work)
        try:
            ended = False
            while not ended:
                for item in await replies.take():
                    if item is None:
                        ended = True
                        break
                    await context.write(item)
            done = await future
        except asyncio.CancelledError:
            stop.cancel()  # client gone or deadline: generation stops
            self.metrics.call("Help", tenant, "CANCELLED", None)
            raise
        except Refused as err:
            log.info("help refused: %s %s", err.code.name, err.message)
            await self._abort(context, "Help", tenant, err)
            return
        finally:
            stop.cancel()  # in case the worker still runs
            admitted.__exit__(None, None, None)
        if done.finish_reason == pb.FINISH_REASON_DEADLINE:
            log.info("help stopped at the deadline after %d tokens", done.usage.generated_tokens)
        await context.write(pb.HelpReply(done=done))
        elapsed = time.perf_counter() - started
        self.metrics.call("Help", tenant, "OK", elapsed, done.usage)
        log.info("help: session=%s prefilled=%d reused=%d generated=%d finish=%s %.3fs",
                 request.session_id, done.usage.prefilled_tokens, done.usage.reused_tokens,
                 done.usage.generated_tokens, pb.FinishReason.Name(done.finish_reason), elapsed)

    async def Sync(self, request, context):
        started = time.perf_counter()
        tenant = ""
        try:
            tenant = self.admission.tenant(context.invocation_metadata())
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed SyncRequest ({request.error}); strings must be valid UTF-8")
            self.admission.rate(tenant)
            plan_ = plan(self.backend, self.max_context, tenant, request.session_id, request.context, extra_tokens=0)
            with self.admission.call(tenant):
                stop = _Stop(context, self.config.max_call_s)
                try:
                    reply = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self._run_sync, tenant, plan_, request, stop)
                except asyncio.CancelledError:
                    stop.cancel()
                    raise
        except Refused as err:
            await self._abort(context, "Sync", tenant, err)
            return
        self.metrics.call("Sync", tenant, "OK", time.perf_counter() - started, reply.usage)
        return reply

    async def EndSession(self, request, context):
        started = time.perf_counter()
        tenant = ""
        try:
            tenant = self.admission.tenant(context.invocation_metadata())
            if isinstance(request, _BadMessage):
                raise invalid(f"malformed EndSessionRequest ({request.error})")
            check_session_id(request.session_id)
            self.admission.rate(tenant)
            with self.admission.call(tenant):
                stop = _Stop(context, self.config.max_queue_s)
                try:
                    existed = await asyncio.get_running_loop().run_in_executor(
                        self.executor, self._drop, (tenant, request.session_id), stop)
                except asyncio.CancelledError:
                    stop.cancel()
                    raise
        except Refused as err:
            await self._abort(context, "EndSession", tenant, err)
            return
        self.metrics.call("EndSession", tenant, "OK", time.perf_counter() - started)
        return pb.EndSessionReply(existed=existed)

    def _drop(self, key, stop: _Stop) -> bool:
        try:
            return self.backend.sessions.drop(key, should_stop=lambda: stop() is not None)
        except Stopped:
            raise Refused(grpc.StatusCode.DEADLINE_EXCEEDED, "the session stayed busy; try EndSession again") from None

    async def Info(self, request, context):
        try:
            self.admission.tenant(context.invocation_metadata())
        except Refused as err:
            await self._abort(context, "Info", "", err)
            return
        return pb.InfoReply(model=self.backend.model_name, backend=self.backend.name,
                            tokenizer_fingerprint=self.backend.fingerprint,
                            max_tokens_per_call=self.config.max_tokens_per_call,
                            max_context_tokens=self.max_context,
                            max_sessions=min(self.config.max_sessions, self.backend.sessions.capacity),
                            version=VERSION)


def handlers(servicer: RelayServicer) -> grpc.GenericRpcHandler:
    def unary(fn, req):
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=lenient(req),
                                                   response_serializer=lambda m: m.SerializeToString())

    return grpc.method_handlers_generic_handler(SERVICE, {
        "Help": grpc.unary_stream_rpc_method_handler(servicer.Help, request_deserializer=lenient(pb.HelpRequest),
                                                     response_serializer=lambda m: m.SerializeToString()),
        "Sync": unary(servicer.Sync, pb.SyncRequest),
        "EndSession": unary(servicer.EndSession, pb.EndSessionRequest),
        "Info": unary(servicer.Info, pb.InfoRequest),
    })

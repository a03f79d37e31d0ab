"""Fairness and hardening of the cloud service (issue 12), real llama.cpp over real gRPC.

A flooding tenant evicts its own sessions, not its neighbours'; turns on the model go
round-robin between tenants; the server caps a call's duration and its wait for a slot;
EndSession counts against the same limits as Help.
"""

from __future__ import annotations

import threading
import time

import grpc
import pytest

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc as pbg

TOKENS = {"tok-flood": "flood", "tok-quiet": "quiet"}


@pytest.fixture(scope="module")
def backend(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=4, n_threads=1)
    yield backend
    backend.close()


def auth(token):
    return (("authorization", f"Bearer {token}"),)


def help_once(stub, session_id, context, token=None, max_tokens=1, timeout=60):
    done = None
    for reply in stub.Help(pb.HelpRequest(session_id=session_id, context=context, max_tokens=max_tokens),
                           timeout=timeout, metadata=auth(token) if token else None):
        if reply.HasField("done"):
            done = reply.done
    return done


def quiet_tenant_reuse(stub, *, flood: bool) -> int:
    """Tokens the quiet tenant's two sessions reuse over 4 rounds, with or without a flood between."""
    held = {}
    reused = 0
    for round_ in range(4):
        for name in ("q1", "q2"):
            if name in held:
                done = held[name]
                context = pb.Context(base_length=done.session_length, base_crc32=done.session_crc32,
                                     text=f" and then round {round_}")
            else:
                context = pb.Context(text=f"The quiet tenant's session {name} talks about the weather")
            try:
                done = help_once(stub, f"{name}-{flood}", context, "tok-quiet")
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
                held.pop(name)
                done = help_once(stub, f"{name}-{flood}", pb.Context(text="evicted, so start again"), "tok-quiet")
            held[name] = done
            reused += done.usage.reused_tokens
        if flood:  # more new sessions than the whole cache holds
            for i in range(6):
                help_once(stub, f"flood-{round_}-{i}", pb.Context(text=f"Flood {i} of round {round_}"), "tok-flood")
    return reused


def test_a_flooding_tenant_evicts_its_own_sessions_not_the_others(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    with ServerThread(backend, config=ServerConfig(tokens=dict(TOKENS))) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pbg.RelayStub(channel)
        alone = quiet_tenant_reuse(stub, flood=False)
        flooded = quiet_tenant_reuse(stub, flood=True)
        channel.close()
    assert alone > 0
    assert flooded >= 0.95 * alone, (flooded, alone)


def test_turns_on_the_model_go_round_robin_between_tenants():
    from relayllm.cloud.admission import FairGate

    gate = FairGate(1)
    order: list[str] = []
    release = threading.Event()

    def call(tenant):
        with gate.turn(tenant, should_stop=lambda: False, timeout_s=30):
            order.append(tenant)
            release.wait(10)

    holder = threading.Thread(target=call, args=("flood",))
    holder.start()
    while not order:
        time.sleep(0.01)
    waiting = []
    for tenant in ["flood"] * 4 + ["quiet"]:  # the quiet tenant arrives last
        t = threading.Thread(target=call, args=(tenant,))
        t.start()
        waiting.append(t)
        while gate.waiting() < len(waiting):
            time.sleep(0.01)
    release.set()
    for t in [holder, *waiting]:
        t.join(10)
    assert order[:3] == ["flood", "flood", "quiet"], order  # not behind the flood's four


def test_the_server_caps_a_call_and_its_wait_for_a_slot(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    one = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=1, n_threads=1)
    config = ServerConfig(max_call_s=0.5, max_queue_s=0.3, max_tokens_per_call=400)
    try:
        with ServerThread(one, config=config) as server:
            channel = grpc.insecure_channel(server.target)
            stub = pbg.RelayStub(channel)
            # no client deadline: the server's cap ends the call, with what was written so far
            start = time.monotonic()
            done = help_once(stub, "long", pb.Context(text="Once upon a time"), max_tokens=400, timeout=None)
            assert done.finish_reason == pb.FINISH_REASON_DEADLINE
            assert 0 < done.usage.generated_tokens < 400 and time.monotonic() - start < 5
            # the one model slot is busy: a second session waits at most max_queue_s
            busy = stub.Help(pb.HelpRequest(session_id="busy", context=pb.Context(text="Once upon a time"),
                                            max_tokens=400))
            next(busy)
            start = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                help_once(stub, "waits", pb.Context(text="Hello"), timeout=30)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "slot" in err.value.details()
            assert time.monotonic() - start < 3
            busy.cancel()
            channel.close()
    finally:
        one.close()


def test_end_session_counts_against_the_same_limits(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    config = ServerConfig(max_concurrent_streams=1, max_tokens_per_call=400, max_call_s=30)
    with ServerThread(backend, config=config) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pbg.RelayStub(channel)
        running = stub.Help(pb.HelpRequest(session_id="runs", context=pb.Context(text="Once upon a time"),
                                           max_tokens=400), timeout=60)
        next(running)
        for call in (lambda: stub.EndSession(pb.EndSessionRequest(session_id="runs"), timeout=10),
                     lambda: stub.Sync(pb.SyncRequest(session_id="other", context=pb.Context(text="Hi")), timeout=10)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        running.cancel()
        # once the Help is gone, EndSession is served (waiting for the session's lease to end)
        deadline = time.monotonic() + 10
        while True:
            try:
                stub.EndSession(pb.EndSessionRequest(session_id="runs"), timeout=10)
                break
            except grpc.RpcError as err:
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < deadline
                time.sleep(0.05)
        channel.close()

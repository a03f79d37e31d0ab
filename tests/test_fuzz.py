"""Fuzzing the cloud service with random and mutated requests (issue 6).

A real server on loopback (llama.cpp backend on SmolLM2) with two tenants. Hypothesis
sends Help/Sync/EndSession requests built from random and mutated fields. For every
request the service must either refuse it with a proper status (never UNKNOWN or
INTERNAL: those mean it crashed) or succeed with consistent content:
- the Done's session_length/session_crc32 describe exactly the context that the client
  sent plus the text the model streamed (so a success never carries wrong content);
- a tenant never continues a session it did not create (base_length > 0 on another
  tenant's session id is refused), so no text crosses tenants;
- after the storm, a fresh client still gets the same greedy answer as before it.
"""

from __future__ import annotations

import zlib

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc as pbg

TOKENS = {"token-a": "tenant-a", "token-b": "tenant-b"}
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.NOT_FOUND,
}
SECRET = "The launch code of tenant A is 7431. "


@pytest.fixture(scope="module")
def cloud(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    config = ServerConfig(tokens=dict(TOKENS), max_tokens_per_call=16, max_context_tokens=512,
                          max_sessions=8, max_sessions_per_tenant=8)
    with ServerThread(LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=8), config=config) as server:
        channel = grpc.insecure_channel(server.target)
        yield server, pbg.RelayStub(channel)
        channel.close()


def auth(token):
    return () if token is None else (("authorization", f"Bearer {token}"),)


def help_text(stub, request, token):
    """(status, generated text, done) of one Help call."""
    pieces = []
    done = None
    try:
        for reply in stub.Help(request, metadata=auth(token), timeout=60):
            if reply.HasField("piece"):
                pieces.append(reply.piece.text)
            else:
                done = reply.done
    except grpc.RpcError as err:
        return err.code(), "".join(pieces), None
    return grpc.StatusCode.OK, "".join(pieces), done


def greedy(n=4):
    return pb.Sampling(temperature=0.0)


session_ids = st.one_of(
    st.sampled_from(["secret-a", "s1", "s2", "fuzz"]),
    st.text(min_size=0, max_size=140),
)
texts = st.one_of(
    st.text(max_size=200),
    st.sampled_from(["", "Question: 12+30=", SECRET, "\x00\x01", "é" * 50, "x" * 5000]),
)
contexts = st.builds(
    lambda base, crc, text, ids, use_ids, fp: pb.Context(
        base_length=base, base_crc32=crc, tokenizer_fingerprint=fp,
        **({"tokens": pb.TokenIds(ids=ids)} if use_ids else {"text": text})),
    base=st.one_of(st.just(0), st.integers(0, 2**64 - 1), st.integers(0, 64)),
    crc=st.integers(0, 2**32 - 1),
    text=texts,
    ids=st.lists(st.integers(0, 2**32 - 1), max_size=20),
    use_ids=st.booleans(),
    fp=st.one_of(st.just(""), st.text(max_size=70)),
)
samplings = st.builds(
    pb.Sampling,
    temperature=st.one_of(st.just(0.0), st.one_of(st.floats(-5, 5, width=32), st.just(float("nan")))),
    top_p=st.one_of(st.floats(-1, 2, width=32), st.just(float("nan"))),
    top_k=st.integers(0, 2**32 - 1),
    seed=st.integers(0, 2**64 - 1),
)
requests = st.builds(pb.HelpRequest, session_id=session_ids, context=contexts,
                     max_tokens=st.one_of(st.integers(0, 20), st.integers(0, 2**32 - 1)),
                     sampling=samplings)
tokens = st.sampled_from([None, "token-a", "token-b", "wrong"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(request=requests, token=tokens)
def test_random_help_requests_are_refused_cleanly_or_answered_consistently(cloud, request, token):
    server, stub = cloud
    status, text, done = help_text(stub, request, token)
    assert status == grpc.StatusCode.OK or status in REFUSALS, f"server failed with {status} on {request!r}"
    if token not in TOKENS:
        assert status in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    if status != grpc.StatusCode.OK:
        return
    assert done is not None, "a successful stream ends with Done"
    ctx = request.context
    if ctx.base_length == 0 and ctx.WhichOneof("delta") in (None, "text"):
        # A fresh text session: the server's context is exactly what we sent plus what it wrote.
        expected = (ctx.text + text).encode()
        assert done.session_length == len(expected)
        assert done.session_crc32 == zlib.crc32(expected)
    if request.session_id == "secret-a" and token == "token-b":
        assert ctx.base_length == 0, "tenant B continued tenant A's session"


def test_a_tenant_cannot_continue_another_tenants_session(cloud):
    server, stub = cloud
    start = pb.HelpRequest(session_id="secret-a", context=pb.Context(text=SECRET), max_tokens=2, sampling=greedy())
    status, text, done = help_text(stub, start, "token-a")
    assert status == grpc.StatusCode.OK
    follow = pb.HelpRequest(session_id="secret-a", max_tokens=4, sampling=greedy(),
                            context=pb.Context(base_length=done.session_length, base_crc32=done.session_crc32,
                                               text=" Repeat it:"))
    status_b, text_b, _ = help_text(stub, follow, "token-b")
    assert status_b in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.PERMISSION_DENIED)
    assert text_b == ""
    status_a, _, done_a = help_text(stub, follow, "token-a")
    assert status_a == grpc.StatusCode.OK and done_a.usage.reused_tokens > 0


def test_service_answers_the_same_after_a_storm_of_garbage(smollm2_path, cloud):
    server, stub = cloud
    probe = pb.HelpRequest(session_id="probe", context=pb.Context(text="The capital of France is"),
                           max_tokens=6, sampling=greedy())
    status, before, _ = help_text(stub, probe, "token-a")
    assert status == grpc.StatusCode.OK and before
    junk = [
        pb.HelpRequest(),
        pb.HelpRequest(session_id="x" * 1000, context=pb.Context(text="a"), max_tokens=1),
        pb.HelpRequest(session_id="ok", context=pb.Context(tokens=pb.TokenIds(ids=[2**31])), max_tokens=1),
        pb.HelpRequest(session_id="ok", context=pb.Context(base_length=99, base_crc32=1, text="a"), max_tokens=1),
        pb.HelpRequest(session_id="ok", context=pb.Context(text="a"), max_tokens=10**9),
        pb.HelpRequest(session_id="ok", context=pb.Context(text="a"), max_tokens=1,
                       sampling=pb.Sampling(temperature=float("nan"))),
    ]
    for request in junk * 3:
        status, _, _ = help_text(stub, request, "token-a")
        assert status in REFUSALS, f"{status} for {request!r}"
    channel = grpc.insecure_channel(server.target)
    status, after, _ = help_text(pbg.RelayStub(channel), probe, "token-a")
    channel.close()
    assert status == grpc.StatusCode.OK and after == before

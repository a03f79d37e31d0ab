"""The cloud service over real gRPC on loopback, llama.cpp backend on SmolLM2 (issue 2, 6).

Covers: streaming + usage, delta-only prefill, stale deltas answered by a resend (never
wrong text), bad requests with their status codes, auth per tenant, TLS, cancellation,
concurrent sessions that do not mix, health + reflection, the client's circuit breaker.
"""

from __future__ import annotations

import subprocess
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc as pbg

PROMPT = "The capital of France is"
TOKENS = {"tok-a": "tenant-a", "tok-b": "tenant-b"}


@pytest.fixture(scope="module")
def backend(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=4, n_threads=1)
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def cloud(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    with ServerThread(backend, config=ServerConfig(max_tokens_per_call=32, max_context_tokens=400)) as server:
        yield server


@pytest.fixture()
def client(cloud):
    from relayllm.edge.client import CloudClient

    client = CloudClient(cloud.target, deadline_s=30.0)
    yield client
    client.close()


def collect(session, **kw):
    return "".join(piece.text for piece in session.help(**kw))


def raw_help(stub, request, metadata=()):
    pieces, done = [], None
    for reply in stub.Help(request, timeout=30, metadata=metadata):
        if reply.HasField("piece"):
            pieces.append(reply.piece)
        else:
            done = reply.done
    return pieces, done


def test_help_streams_tokens_and_ends_with_usage(cloud):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)
    pieces, done = raw_help(stub, pb.HelpRequest(session_id="stream-1", context=pb.Context(text=PROMPT), max_tokens=6))
    channel.close()
    text = "".join(p.text for p in pieces)
    assert text.startswith(" Paris")
    assert len(pieces) == 6 and done.finish_reason == pb.FINISH_REASON_LENGTH
    assert done.usage.generated_tokens == 6 and done.usage.prefilled_tokens == 5 and done.usage.reused_tokens == 0
    whole = (PROMPT + text).encode()
    assert done.session_length == len(whole) and done.session_crc32 == zlib.crc32(whole)


def test_second_call_prefills_only_the_delta_token_mode(client, backend):
    session = client.session()
    prompt = backend.tokenize(PROMPT.encode())
    generated = [p.token_id for p in session.help(tokens=prompt, max_tokens=4)]
    assert session.last_done.usage.prefilled_tokens == len(prompt)
    delta = backend.tokenize(b" Berlin is the capital of")
    context = prompt + generated + delta
    list(session.help(tokens=context, max_tokens=4))
    usage = session.last_done.usage
    assert usage.reused_tokens == len(prompt) + len(generated)
    assert usage.prefilled_tokens == len(delta)
    assert session.stats.resends == 0


def test_second_call_prefills_only_the_delta_text_mode(client, backend):
    session = client.session()
    first = collect(session, text=PROMPT, max_tokens=2)  # " Paris." (retokenizes the same)
    before = len(backend.tokenize((PROMPT + first).encode()))
    bytes_first = session.stats.bytes_sent
    collect(session, text=PROMPT + first + " Berlin is the capital of", max_tokens=4)
    usage = session.last_done.usage
    assert usage.reused_tokens == before
    assert usage.prefilled_tokens == len(backend.tokenize((PROMPT + first + " Berlin is the capital of").encode())) - before
    # Only the delta went on the wire: the second request is smaller than the first plus the delta.
    assert session.stats.bytes_sent - bytes_first < bytes_first + len(" Berlin is the capital of")


def test_stale_delta_is_answered_by_a_resend_with_the_same_text(cloud, client):
    fresh = client.session()
    expected = collect(fresh, text=PROMPT + " Paris. Berlin is", max_tokens=6)

    # Wrong checksum: the client believes the cloud holds text of the right length that
    # starts the new context, but the cloud holds other text.
    other = "The capital of Greece is Paris. Berlin is"
    expected_other = collect(client.session(), text=other, max_tokens=6)
    session = client.session()
    collect(session, text=PROMPT, max_tokens=1)
    session._held = other.encode()[: len(session._held)]
    assert collect(session, text=other, max_tokens=6) == expected_other
    assert session.stats.resends == 1

    # Wrong offset: the client believes the cloud holds more than it does.
    session = client.session()
    collect(session, text=PROMPT, max_tokens=1)
    session._held = session._held + b". Berlin"  # longer than what the cloud holds
    assert collect(session, text=PROMPT + " Paris. Berlin is", max_tokens=6) == expected
    assert session.stats.resends == 1

    # Evicted: the cloud forgot the session.
    session = client.session()
    collect(session, text=PROMPT, max_tokens=1)
    stub = pbg.RelayStub(client.channel)
    assert stub.EndSession(pb.EndSessionRequest(session_id=session.id), timeout=10).existed
    assert collect(session, text=PROMPT + " Paris. Berlin is", max_tokens=6) == expected
    assert session.stats.resends == 1


def test_evicted_by_lru_gets_failed_precondition(cloud, backend):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)
    _, done = raw_help(stub, pb.HelpRequest(session_id="old", context=pb.Context(text=PROMPT), max_tokens=1))
    for i in range(backend.sessions.capacity):
        raw_help(stub, pb.HelpRequest(session_id=f"newer-{i}", context=pb.Context(text="Hello"), max_tokens=1))
    with pytest.raises(grpc.RpcError) as err:
        raw_help(stub, pb.HelpRequest(session_id="old", max_tokens=1, context=pb.Context(
            base_length=done.session_length, base_crc32=done.session_crc32, text=" and")))
    channel.close()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "evicted" in err.value.details()


BAD = [
    ("max_tokens zero", dict(max_tokens=0), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("max_tokens huge", dict(max_tokens=10**9), grpc.StatusCode.INVALID_ARGUMENT, "max_tokens"),
    ("empty session id", dict(session_id=""), grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
    ("bad session id", dict(session_id="a/b"), grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
    ("long session id", dict(session_id="x" * 129), grpc.StatusCode.INVALID_ARGUMENT, "session_id"),
    ("prefix too long", dict(context=pb.Context(text="word " * 600)), grpc.StatusCode.INVALID_ARGUMENT, "too long"),
    ("temperature", dict(sampling=pb.Sampling(temperature=3.0)), grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ("temperature nan", dict(sampling=pb.Sampling(temperature=float("nan"))), grpc.StatusCode.INVALID_ARGUMENT,
     "temperature"),
    ("top_p", dict(sampling=pb.Sampling(top_p=1.5)), grpc.StatusCode.INVALID_ARGUMENT, "top_p"),
    ("unknown session", dict(context=pb.Context(base_length=5, base_crc32=1, text="x")),
     grpc.StatusCode.FAILED_PRECONDITION, "unknown"),
    ("wrong fingerprint", dict(context=pb.Context(tokens=pb.TokenIds(ids=[1, 2]), tokenizer_fingerprint="nope")),
     grpc.StatusCode.FAILED_PRECONDITION, "fingerprint"),
    ("empty context", dict(context=pb.Context(text="")), grpc.StatusCode.INVALID_ARGUMENT, "empty"),
]


def test_bad_requests_get_clear_statuses_and_the_server_keeps_serving(cloud, backend):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)
    good = pb.HelpRequest(session_id="fine", context=pb.Context(text=PROMPT), max_tokens=3)
    expected = "".join(p.text for p in raw_help(stub, good)[0])
    cases = BAD + [("token out of vocab", dict(context=pb.Context(tokens=pb.TokenIds(ids=[backend.n_vocab]),
                                                                   tokenizer_fingerprint=backend.fingerprint)),
                    grpc.StatusCode.INVALID_ARGUMENT, "vocabulary")]
    for name, fields, code, word in cases:
        request = pb.HelpRequest(session_id="bad-1", context=pb.Context(text=PROMPT), max_tokens=2)
        for field, value in fields.items():
            if isinstance(value, (pb.Context, pb.Sampling)):
                getattr(request, field).CopyFrom(value)
            else:
                setattr(request, field, value)
        with pytest.raises(grpc.RpcError) as err:
            raw_help(stub, request)
        assert err.value.code() == code, name
        assert word in err.value.details(), (name, err.value.details())
    # Invalid UTF-8 in a string field: the raw bytes of a HelpRequest with a bad session id.
    raw = grpc.insecure_channel(cloud.target).unary_stream("/relayllm.v1.Relay/Help")
    with pytest.raises(grpc.RpcError) as err:
        list(raw(b"\x0a\x02\xff\xfe\x18\x01", timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # The next client is served, with the same answer as before.
    assert "".join(p.text for p in raw_help(stub, good)[0]) == expected
    channel.close()


def test_auth_and_tenants(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient, CloudError

    with ServerThread(backend, config=ServerConfig(tokens=dict(TOKENS))) as server:
        for token in (None, "wrong"):
            with CloudClient(server.target, token=token, deadline_s=10) as anonymous:
                with pytest.raises(CloudError) as err:
                    collect(anonymous.session(), text=PROMPT, max_tokens=2)
                assert err.value.reason == "refused:UNAUTHENTICATED"
        channel = grpc.insecure_channel(server.target)
        stub = pbg.RelayStub(channel)
        a, b = (("authorization", "Bearer tok-a"),), (("authorization", "Bearer tok-b"),)
        _, done = raw_help(stub, pb.HelpRequest(session_id="shared", context=pb.Context(text="Secret of A:"),
                                                 max_tokens=2), a)
        follow = pb.HelpRequest(session_id="shared", max_tokens=2, context=pb.Context(
            base_length=done.session_length, base_crc32=done.session_crc32, text=" again"))
        with pytest.raises(grpc.RpcError) as err:
            raw_help(stub, follow, b)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        pieces, done_a = raw_help(stub, follow, a)
        assert done_a.usage.reused_tokens > 0
        channel.close()


def _self_signed(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return key.read_bytes(), cert.read_bytes()


def test_tls(backend, tmp_path):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient, CloudError

    key, cert = _self_signed(tmp_path)
    with ServerThread(backend, config=ServerConfig(tls_cert=cert, tls_key=key)) as server:
        with CloudClient(server.target, root_certificates=cert, deadline_s=20) as client:
            assert collect(client.session(), text=PROMPT, max_tokens=3).startswith(" Paris")
        with CloudClient(server.target, deadline_s=5) as plain:  # no TLS: refused
            with pytest.raises(CloudError):
                collect(plain.session(), text=PROMPT, max_tokens=3)


def test_cancellation_stops_generation(cloud, backend):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)
    call = stub.Help(pb.HelpRequest(session_id="cancel-me", context=pb.Context(text="Once upon a time"),
                                    max_tokens=32), timeout=30)
    next(call)
    call.cancel()
    # The session's lease is released once generation has stopped; then its context is
    # the prompt plus what was written before the stop: far fewer than 32 tokens.
    from relayllm.edge.client import CloudClient

    deadline = time.monotonic() + 20
    key = ("", "cancel-me")
    while time.monotonic() < deadline:
        with backend.sessions.lease(key, create=False) as session:
            written = len(session.kv_tokens) - len(backend.tokenize(b"Once upon a time"))
            if session.context is not None:
                break
    assert written < 20, written
    channel.close()
    with CloudClient(cloud.target) as client:  # the server still serves
        assert collect(client.session(), text=PROMPT, max_tokens=2)


def test_many_sessions_at_once_do_not_mix(cloud):
    from relayllm.edge.client import CloudClient

    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite fruit is",
               "The largest planet is", "Water boils at"]
    with CloudClient(cloud.target, deadline_s=60) as client:
        alone = [collect(client.session(), text=p, max_tokens=6) for p in prompts]

        def twice(prompt):
            session = client.session()
            first = collect(session, text=prompt, max_tokens=6)
            return first, collect(session, text=prompt + first + " And", max_tokens=3)

        with ThreadPoolExecutor(6) as pool:
            together = list(pool.map(twice, prompts))
    assert [first for first, _ in together] == alone
    assert len(set(alone)) == len(alone)


def test_health_and_reflection(cloud):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    channel = grpc.insecure_channel(cloud.target)
    status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="relayllm.v1.Relay"),
                                                        timeout=10)
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    replies = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert {"relayllm.v1.Relay", "grpc.health.v1.Health"} <= names
    channel.close()


def test_info(client, backend):
    info = client.info()
    assert info.backend == "llama.cpp-contexts" and info.tokenizer_fingerprint == backend.fingerprint
    assert info.max_tokens_per_call == 32 and info.max_sessions == 4


def test_circuit_breaker_opens_and_closes(backend):
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CircuitBreaker, CloudClient, CloudError

    server = ServerThread(backend)
    port = server.port
    server.stop()
    breaker = CircuitBreaker(failures=2, reset_s=0.5)
    with CloudClient(f"127.0.0.1:{port}", deadline_s=2, breaker=breaker) as client:
        reasons = []
        for _ in range(3):
            with pytest.raises(CloudError) as err:
                collect(client.session(), text=PROMPT, max_tokens=2)
            reasons.append(err.value.reason)
        assert reasons[:2] == ["unreachable", "unreachable"] and reasons[2] == "circuit_open"
        assert breaker.state == "open"
        revived = ServerThread(backend, port=port)
        try:
            time.sleep(0.6)  # past reset_s: the next call probes the health service
            assert collect(client.session(), text=PROMPT, max_tokens=2)
            assert breaker.state == "closed"
        finally:
            revived.stop()


def test_limits_rate_message_size_and_sessions_per_tenant(backend):
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    config = ServerConfig(rate_per_s=0.01, max_message_bytes=2000, max_sessions_per_tenant=1)
    with ServerThread(backend, config=config) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pbg.RelayStub(channel)
        _, done = raw_help(stub, pb.HelpRequest(session_id="one", context=pb.Context(text=PROMPT), max_tokens=1))
        with pytest.raises(grpc.RpcError) as err:  # the tenant's one request per 100 s is spent
            raw_help(stub, pb.HelpRequest(session_id="two", context=pb.Context(text=PROMPT), max_tokens=1))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "rate" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:
            raw_help(stub, pb.HelpRequest(session_id="big", context=pb.Context(text="x" * 5000), max_tokens=1))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        channel.close()
    with ServerThread(backend, config=ServerConfig(max_sessions_per_tenant=1)) as server:
        channel = grpc.insecure_channel(server.target)
        stub = pbg.RelayStub(channel)
        _, done = raw_help(stub, pb.HelpRequest(session_id="first", context=pb.Context(text=PROMPT), max_tokens=1))
        raw_help(stub, pb.HelpRequest(session_id="second", context=pb.Context(text=PROMPT), max_tokens=1))
        with pytest.raises(grpc.RpcError) as err:  # the tenant's second session pushed out its first
            raw_help(stub, pb.HelpRequest(session_id="first", max_tokens=1, context=pb.Context(
                base_length=done.session_length, base_crc32=done.session_crc32, text=" and")))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        channel.close()


def test_serve_cli_listens_answers_and_stops_on_ctrl_c(smollm2_path, tmp_path):
    import os
    import signal
    import sys

    code = ("import sys, relayllm.cloud.cli; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'transformers', 'llama_cpp')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, "relayllm.cloud.cli imports heavy modules"
    from relayllm.protos.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing.gguf")]) == 2
    os.environ["RELAYLLM_TOKENS"] = "no-tenant"
    try:
        assert main(["serve", "--model", str(smollm2_path), "--insecure"]) == 2
        os.environ["RELAYLLM_TOKENS"] = "secret:team"
        assert main(["serve", "--model", str(smollm2_path)]) == 2  # tokens without TLS need --insecure
    finally:
        del os.environ["RELAYLLM_TOKENS"]
    process = subprocess.Popen([sys.executable, "-m", "relayllm.protos.cli", "serve", "--model", str(smollm2_path),
                                "--port", "0", "--max-sessions", "2", "--n-ctx", "256", "--insecure"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "RELAYLLM_TOKENS": "secret:team"})
    try:
        line = process.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line + process.stderr.read()
        target = line.split("listening on ")[1].split()[0]
        from relayllm.edge.client import CloudClient

        with CloudClient(target, token="secret", deadline_s=30) as client:
            assert client.info().backend == "llama.cpp-batched"
            assert "".join(p.text for p in client.session().help(text=PROMPT, max_tokens=2)).startswith(" Paris")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_sync_warms_the_cache_so_help_prefills_nothing(client, backend):
    session = client.session()
    session.sync(text=PROMPT)
    assert session.stats.prefilled_tokens == len(backend.tokenize(PROMPT.encode()))
    text = collect(session, text=PROMPT, max_tokens=3)
    usage = session.last_done.usage
    assert usage.prefilled_tokens == 0 and usage.reused_tokens == len(backend.tokenize(PROMPT.encode()))
    assert text == collect(client.session(), text=PROMPT, max_tokens=3)
    session.sync(text=PROMPT + text + " Berlin")  # a Sync after a Help sends only the delta
    assert session.stats.resends == 0


def test_logs_hold_no_prompt_and_no_bearer_token(backend, caplog):
    """Info-level logs say what happened (sizes, timings, status) but never what was said,
    nor the credentials: neither the prompt, nor the LLM's text, nor a token."""
    import logging

    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient, CloudError

    secret_prompt = "My bank password is hunter2 and my name is"
    with caplog.at_level(logging.DEBUG, logger="relayllm"), \
            ServerThread(backend, config=ServerConfig(tokens={"tok-SECRET-123": "alice"})) as server:
        with CloudClient(server.target, token="tok-SECRET-123", deadline_s=30.0) as good:
            generated = collect(good.session(), text=secret_prompt, max_tokens=4)
        with CloudClient(server.target, token="tok-WRONG-456", deadline_s=30.0) as bad:
            with pytest.raises(CloudError):
                collect(bad.session(), text=secret_prompt, max_tokens=4)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "help:" in logged, "the server logs its calls (so this test looks at real log lines)"
    for secret in ("hunter2", secret_prompt, "tok-SECRET-123", "tok-WRONG-456"):
        assert secret not in logged
    assert generated.strip() == "" or generated not in logged

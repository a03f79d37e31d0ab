"""The gateway backend against a real OpenAI-compatible engine on loopback (issue 12):
llama-cpp-python's own server serving SmolLM2, the relay service in front of it.

Covers: the engine's prompt format found by probing (llama_cpp.server takes text only),
the same greedy text as calling the engine directly, deltas from the device with the
gateway keeping each session's tokens, token mode with the documented fallback
(retokenized text), a resend after eviction, cancellation reaching the engine, and bad
input statuses (the gateway's own checks, the engine's refusals, the engine down).
"""

from __future__ import annotations

import time

import grpc
import pytest

pytest.importorskip("llama_cpp.server.app", reason="llama-cpp-python[server] deps are in the [dev] extra")

from relayllm.training.bench.llama_server import Engine  # noqa: E402

from relayllm.protos import relay_pb2 as pb  # noqa: E402
from relayllm.protos import relay_pb2_grpc as pbg  # noqa: E402
from gateway_fixtures import client, cloud, evicted_session_is_resent, text_of  # noqa: E402,F401 - tests/ is on sys.path

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def engine(smollm2_path):
    engine = Engine(smollm2_path, n_ctx=1024)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def gateway(engine, smollm2_path):
    from relayllm.cloud.backends.openai_gateway import OpenAIGatewayBackend

    backend = OpenAIGatewayBackend(engine.url, model=engine.alias, tokenizer=smollm2_path, n_ctx=4096, max_sessions=2)
    yield backend
    backend.close()


def test_the_probe_finds_llama_cpp_server_takes_text_prompts_only(gateway):
    assert gateway.prompt_as_tokens is False
    assert gateway.name == "openai-gateway" and gateway.fingerprint


def test_same_text_as_the_engine_and_deltas_reuse_the_session(client, engine, gateway):
    direct = engine.complete(PROMPT, 6)["choices"][0]["text"]
    session = client.session()
    first = text_of(session, text=PROMPT, max_tokens=6)
    assert first == direct
    whole = PROMPT + first + " Berlin is the capital of"
    second = text_of(session, text=whole, max_tokens=4)
    usage = session.last_done.usage
    assert usage.reused_tokens == len(gateway.tokenize((PROMPT + first).encode()))
    assert usage.prefilled_tokens == len(gateway.tokenize(whole.encode())) - usage.reused_tokens
    assert session.stats.resends == 0
    assert second == engine.complete(whole, 4)["choices"][0]["text"]


def test_token_mode_streams_ids_whose_text_is_the_engines(client, engine, gateway):
    session = client.session()
    prompt = gateway.tokenize(PROMPT.encode())
    pieces = list(session.help(tokens=prompt, max_tokens=6))
    assert "".join(p.text for p in pieces) == engine.complete(PROMPT, 6)["choices"][0]["text"]
    ids = [p.token_id for p in pieces]
    assert b"".join(gateway.token_bytes(i) for i in ids).decode() == "".join(p.text for p in pieces)
    list(session.help(tokens=prompt + ids + gateway.tokenize(b" And")[1:], max_tokens=2))
    assert session.last_done.usage.reused_tokens == len(prompt) + len(ids)


def test_an_evicted_session_is_resent_never_answered_wrong(client, engine, gateway):
    evicted_session_is_resent(client, engine, gateway, PROMPT)


def test_cancelling_a_call_stops_the_engine(cloud, engine):
    engine.complete(PROMPT, 1)  # the engine's first request after start-up can stall for seconds: not this one
    channel = grpc.insecure_channel(cloud.target)
    call = pbg.RelayStub(channel).Help(pb.HelpRequest(
        session_id="cancel-me", context=pb.Context(text="Write a long story about a dragon. Once upon a time"),
        max_tokens=400), timeout=60)
    next(call)
    call.cancel()
    # llama_cpp.server runs one request at a time: had the 400-token request gone on (about
    # 5 s here), this one would wait behind it
    start = time.monotonic()
    engine.complete(PROMPT, 2)
    assert time.monotonic() - start < 3.0
    channel.close()


def test_bad_input_gets_clear_statuses(cloud, engine, smollm2_path):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)

    def status(request):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Help(request, timeout=60))
        return err.value.code(), err.value.details()

    code, _ = status(pb.HelpRequest(session_id="bad", context=pb.Context(text=PROMPT), max_tokens=0))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = status(pb.HelpRequest(session_id="bad", context=pb.Context(
        tokens=pb.TokenIds(ids=[1, 2]), tokenizer_fingerprint="other"), max_tokens=2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    # over the engine's 1024 tokens (the gateway was told 4096): llama_cpp.server ends the
    # stream without a word; the gateway says so rather than answer with nothing
    code, details = status(pb.HelpRequest(session_id="long", context=pb.Context(text="word " * 1100), max_tokens=2))
    assert code == grpc.StatusCode.UNAVAILABLE and "context length" in details
    channel.close()
    # the engine down: UNAVAILABLE, said plainly
    from relayllm.cloud.backends.openai_gateway import OpenAIGatewayBackend
    from relayllm.cloud.harness import ServerThread

    other = Engine(smollm2_path, n_ctx=256)
    backend = OpenAIGatewayBackend(other.url, model=other.alias, tokenizer=smollm2_path, prompt_format="text",
                                   n_ctx=256)
    other.stop()
    try:
        with ServerThread(backend) as server:
            channel = grpc.insecure_channel(server.target)
            with pytest.raises(grpc.RpcError) as err:  # told the engine's context: refused before the engine
                list(pbg.RelayStub(channel).Help(pb.HelpRequest(session_id="x", context=pb.Context(
                    text="word " * 300), max_tokens=2), timeout=30))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "too long" in err.value.details()
            with pytest.raises(grpc.RpcError) as err:
                list(pbg.RelayStub(channel).Help(pb.HelpRequest(session_id="x", context=pb.Context(text=PROMPT),
                                                                max_tokens=2), timeout=30))
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "engine" in err.value.details()
            channel.close()
    finally:
        backend.close()


def test_relayllm_serve_runs_the_gateway_and_stops_on_sigterm(engine, smollm2_path):
    import os
    import signal
    import subprocess
    import sys

    from relayllm.edge.client import CloudClient

    process = subprocess.Popen(
        [sys.executable, "-m", "relayllm.protos.cli", "serve", "--backend", "openai-gateway", "--upstream-url",
         engine.url, "--model", engine.alias, "--tokenizer", str(smollm2_path), "--n-ctx", "1024", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = process.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line + process.stderr.read()
        target = line.split("listening on ")[1].split()[0]
        with CloudClient(target, deadline_s=30) as client:
            assert client.info().backend == "openai-gateway" and client.info().max_context_tokens == 1024
            assert text_of(client.session(), text=PROMPT, max_tokens=3) == engine.complete(PROMPT, 3)["choices"][0]["text"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

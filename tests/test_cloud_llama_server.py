"""The gateway in front of llama.cpp's own llama-server (issue 12), a real engine on loopback:
the binary .ci/setup builds from the pinned llama-cpp-python's vendored llama.cpp, serving
SmolLM2 with 4 slots decoded together (`--parallel 4`, continuous batching).

Covers: token-id prompts and token ids back (llama-server's /completion with
return_tokens), deltas over gRPC with the reuse the engine reports (its timings.cache_n),
a resend after eviction, cancellation reaching the engine (its /slots), bad input statuses,
cache_salt refused (llama-server has none), and greedy output of 4 concurrent sessions
through the gateway equal to the local llama.cpp backend's on the same GGUF, with the
engine's /metrics showing the sessions shared decode steps.

Skips only when no binary is found and RELAYLLM_REQUIRE_LLAMA_SERVER is unset; .ci/run
sets it, so in CI a missing binary fails.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from relayllm.protos import relay_pb2 as pb
from relayllm.protos import relay_pb2_grpc as pbg
from relayllm.training.bench.llama_server import LlamaServer, llama_server_binary
from gateway_fixtures import client, cloud, evicted_session_is_resent, text_of  # noqa: F401 - fixtures by name; tests/ is on sys.path

if llama_server_binary() is None and not os.environ.get("RELAYLLM_REQUIRE_LLAMA_SERVER"):
    pytest.skip("no llama-server binary (.ci/setup builds it; or set RELAYLLM_LLAMA_SERVER)", allow_module_level=True)

PROMPT = "The capital of France is"
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite fruit is"]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    if llama_server_binary() is None:  # RELAYLLM_REQUIRE_LLAMA_SERVER is set (CI): a missing binary fails
        pytest.fail("RELAYLLM_REQUIRE_LLAMA_SERVER is set but no llama-server binary was found: run .ci/setup")
    engine = LlamaServer(smollm2_path, n_ctx=1024, parallel=4)
    yield engine
    engine.stop()


@pytest.fixture(scope="module")
def gateway(engine, smollm2_path):
    from relayllm.cloud.backends.openai_gateway import OpenAIGatewayBackend

    backend = OpenAIGatewayBackend(engine.url, model=engine.alias, tokenizer=smollm2_path, n_ctx=1024, max_sessions=4)
    yield backend
    backend.close()


def engine_tokens(engine, prompt: list[int], n: int) -> list[int]:
    """The engine's own greedy ids for a token prompt (its /completion, not streamed)."""
    reply = httpx.post(f"{engine.root}/completion", timeout=120, json={
        "prompt": prompt, "n_predict": n, "return_tokens": True, "temperature": 0, "top_k": 0, "min_p": 0.0,
        "repeat_penalty": 1.0})
    reply.raise_for_status()
    return reply.json()["tokens"]


def test_the_gateway_finds_llama_server_and_sends_token_ids(gateway):
    assert gateway.llama_server and gateway.prompt_as_tokens


def test_token_ids_come_back_as_the_engine_wrote_them(client, engine, gateway):
    prompt = gateway.tokenize(PROMPT.encode())
    pieces = list(client.session().help(tokens=prompt, max_tokens=8))
    ids = [p.token_id for p in pieces]
    assert ids == engine_tokens(engine, prompt, 8)
    assert "".join(p.text for p in pieces) == engine.complete(PROMPT, 8)["choices"][0]["text"]


def test_ids_held_back_inside_a_utf8_character_are_the_engines_too(client, engine, gateway):
    # SmolLM2 writes Japanese here one byte-token at a time: llama-server streams no id for a
    # token that ends inside a character; the gateway tokenizes that chunk's text again, which
    # gives the engine's own split here
    prompt = gateway.tokenize("Ça va? 日本語".encode())
    expected = engine_tokens(engine, prompt, 8)
    assert any(not gateway.token_bytes(t).decode("utf-8", "ignore") for t in expected)  # the case arises
    assert [p.token_id for p in client.session().help(tokens=prompt, max_tokens=8)] == expected


def test_deltas_send_only_new_tokens_and_the_engine_reuses_its_cache(client, gateway):
    session = client.session()
    prompt = gateway.tokenize(b"A short story about a lighthouse keeper who found a bottle on the shore. Chapter one:")
    first = [p.token_id for p in session.help(tokens=prompt, max_tokens=6)]
    sent = session.stats.bytes_sent
    whole = prompt + first + gateway.tokenize(b" The keeper")  # SmolLM2 adds no BOS
    list(session.help(tokens=whole, max_tokens=4))
    delta_bytes = session.stats.bytes_sent - sent
    full = pb.HelpRequest(session_id=session.id, max_tokens=4, context=pb.Context(
        tokens=pb.TokenIds(ids=whole), tokenizer_fingerprint=gateway.fingerprint)).ByteSize()
    assert session.stats.resends == 0
    assert delta_bytes < full - len(prompt)  # the first call's tokens did not travel again
    usage = session.last_done.usage  # the engine's own figures: its slot still held the first call
    assert usage.reused_tokens >= len(prompt), usage
    assert usage.reused_tokens + usage.prefilled_tokens == len(whole)


def test_an_evicted_session_is_resent_never_answered_wrong(client, engine, gateway):
    evicted_session_is_resent(client, engine, gateway, PROMPT)


def test_cancelling_a_call_frees_the_engines_slot(cloud, engine):
    channel = grpc.insecure_channel(cloud.target)
    # counting goes on without an end of text: only the cancel can stop it before 400 tokens
    call = pbg.RelayStub(channel).Help(pb.HelpRequest(
        session_id="cancel-me", context=pb.Context(text="1, 2, 3, 4, 5, 6, 7, 8,"), max_tokens=400), timeout=120)
    next(call)
    call.cancel()
    start = time.monotonic()
    while any(slot["is_processing"] for slot in engine.slots()):
        assert time.monotonic() - start < 3.0, engine.slots()  # 400 tokens take far longer here
        time.sleep(0.05)
    decoded = max(slot["next_token"][0]["n_decoded"] for slot in engine.slots())
    assert decoded < 200, decoded
    channel.close()


def test_bad_input_gets_clear_statuses(cloud, engine, gateway, smollm2_path):
    channel = grpc.insecure_channel(cloud.target)
    stub = pbg.RelayStub(channel)

    def status(request):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Help(request, timeout=60))
        return err.value.code(), err.value.details()

    assert status(pb.HelpRequest(session_id="bad", context=pb.Context(text=PROMPT), max_tokens=0))[0] \
        == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = status(pb.HelpRequest(session_id="bad", context=pb.Context(
        tokens=pb.TokenIds(ids=[1, 2]), tokenizer_fingerprint="other"), max_tokens=2))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    code, details = status(pb.HelpRequest(session_id="bad", context=pb.Context(
        tokens=pb.TokenIds(ids=[1, gateway.n_vocab + 5]), tokenizer_fingerprint=gateway.fingerprint), max_tokens=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    code, details = status(pb.HelpRequest(session_id="long", context=pb.Context(text="word " * 1100), max_tokens=2))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "too long" in details
    channel.close()


def test_over_the_engines_slot_context_the_engines_refusal_is_passed_on(engine, smollm2_path):
    from relayllm.cloud.backends.openai_gateway import OpenAIGatewayBackend
    from relayllm.cloud.harness import ServerThread

    # told more than the engine's 1024 tokens per slot: the engine refuses, the gateway says why
    backend = OpenAIGatewayBackend(engine.url, model=engine.alias, tokenizer=smollm2_path, n_ctx=4096)
    try:
        with ServerThread(backend) as server:
            channel = grpc.insecure_channel(server.target)
            with pytest.raises(grpc.RpcError) as err:
                list(pbg.RelayStub(channel).Help(pb.HelpRequest(session_id="x", context=pb.Context(
                    text="word " * 1100), max_tokens=2), timeout=60))
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
            assert "engine refused" in err.value.details() and "context" in err.value.details()
            channel.close()
    finally:
        backend.close()


def test_cache_salt_is_refused_in_front_of_llama_server(engine, smollm2_path):
    from relayllm.cloud.backends.openai_gateway import OpenAIGatewayBackend

    with pytest.raises(ValueError, match="no cache_salt"):
        OpenAIGatewayBackend(engine.url, model=engine.alias, tokenizer=smollm2_path, salt_tenants=True)


def busy_slots_and_decodes(engine) -> tuple[float, float]:
    metrics = {}
    for line in httpx.get(f"{engine.root}/metrics", timeout=10).text.splitlines():
        if line.startswith("llamacpp:"):
            name, value = line.split()
            metrics[name.removeprefix("llamacpp:")] = float(value)
    return metrics["n_busy_slots_per_decode"] * metrics["n_decode_total"], metrics["n_decode_total"]


def two_calls(client, prompt):
    session = client.session()
    first = text_of(session, text=prompt, max_tokens=12)
    return first, text_of(session, text=prompt + first + " And", max_tokens=6)


def test_four_concurrent_sessions_equal_the_local_backend_and_share_decode_steps(client, engine, smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    local = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=1, n_threads=1)
    try:
        with ServerThread(local) as server, CloudClient(server.target, deadline_s=120) as alone:
            expected = [two_calls(alone, p) for p in PROMPTS]  # the same GGUF in-process, one at a time
    finally:
        local.close()
    busy, decodes = busy_slots_and_decodes(engine)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: two_calls(client, p), PROMPTS))
    assert together == expected
    assert len({first for first, _ in expected}) == len(PROMPTS)
    busy_after, decodes_after = busy_slots_and_decodes(engine)
    assert (busy_after - busy) / (decodes_after - decodes) > 1.5  # slots decoded together

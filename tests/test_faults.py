"""Faults between the device and the cloud (issue 6): every request still completes.

The SLM (SmolLM2 on llama.cpp) decodes through the edge SDK with a router that forces a
call every few tokens, so the splice path runs many times per request. Between the SDK
and a real cloud service sits tests/faultproxy.py (FaultProxy), which refuses, hangs, slows,
cuts or garbles the connection on demand. Each scenario checks the same promises:
- the request completes (the SLM goes on alone) and the result says it degraded and why;
- the text already written is intact: the result's text is exactly the concatenation of
  every piece streamed to the app, SLM and LLM alike;
- no call waits past its deadline (CallFinished.latency_s, with a generous slack for a
  busy machine; the point is "not stuck", not speed).
Short runs by default; `pytest --long` repeats each scenario many times.
"""

from __future__ import annotations

import time

import pytest

from faultproxy import FaultProxy  # tests/ is on sys.path (rootdir conftest)

DEADLINE_S = 1.0
SLACK_S = 4.0
PROMPT = "Once upon a time, in a small village by the sea,"


class EveryK:
    """Asks the LLM for `n` tokens every `k` SLM tokens: the splice path on purpose."""

    def __init__(self, k=6, n=3):
        self.k, self.n, self.seen = k, n, 0

    def decide(self, step) -> int:
        self.seen += 1
        return self.n if self.seen % self.k == 0 else 0


@pytest.fixture(scope="module")
def slm(smollm2_path):
    from llama_cpp import Llama

    return Llama(model_path=str(smollm2_path), n_ctx=1024, verbose=False)


@pytest.fixture(scope="module")
def cloud(smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread

    server = ServerThread(LlamaCppBackend(str(smollm2_path), n_ctx=1024, max_sessions=4))
    server.__enter__()
    yield server
    server.stop()


def decode(slm, target, *, router=None, on_event=None, max_tokens=40, breaker=None):
    from relayllm.edge.client import CloudClient
    from relayllm.edge.events import CallFinished, Result, TextPiece
    from relayllm.edge import Limits, RelayDecoder

    client = CloudClient(target, deadline_s=DEADLINE_S, **({"breaker": breaker} if breaker else {}))
    decoder = RelayDecoder(slm, cloud=client, router=router or EveryK(),
                           limits=Limits(max_calls=20, max_llm_tokens=60, max_total_tokens=max_tokens))
    pieces, calls, result = [], [], None
    try:
        for event in decoder.stream(PROMPT):
            if on_event:
                on_event(event)
            if isinstance(event, TextPiece):
                pieces.append(event.text)
            elif isinstance(event, CallFinished):
                calls.append(event)
            elif isinstance(event, Result):
                result = event
    finally:
        client.close()
    assert result is not None, "the stream ended without a Result"
    assert result.text == "".join(pieces), "text streamed to the app was lost or changed"
    assert result.slm_tokens > 0
    assert result.slm_tokens + result.llm_tokens <= max_tokens
    for call in calls:
        assert call.latency_s < DEADLINE_S + SLACK_S, f"a call waited {call.latency_s:.1f}s past its deadline"
    return result, calls


def repeats(request):
    return 12 if request.config.getoption("--long") else 2


def test_healthy_cloud_gives_a_complete_answer_with_llm_spans(slm, cloud):
    with FaultProxy(cloud.port) as proxy:
        result, calls = decode(slm, proxy.target)
    assert not result.degraded, result.degraded_reasons
    assert result.calls == len(calls) > 0 and all(c.ok for c in calls)
    assert result.llm_tokens > 0
    assert any(author == "llm" for author, _ in result.spans)


@pytest.mark.parametrize("mode", ["refuse", "hang", "slow", "garbage"])
def test_a_failing_cloud_never_loses_text_nor_blocks(slm, cloud, mode, request):
    for _ in range(repeats(request)):
        with FaultProxy(cloud.port, mode=mode, delay_s=DEADLINE_S * 3) as proxy:
            result, calls = decode(slm, proxy.target)
        assert result.degraded and result.degraded_reasons
        assert calls and not any(c.ok and c.received_tokens == c.requested_tokens for c in calls)
        assert result.llm_tokens <= sum(c.received_tokens for c in calls)


def test_cloud_killed_mid_stream_keeps_what_was_written(slm, cloud, request):
    from relayllm.edge.events import CallStarted

    for _ in range(repeats(request)):
        with FaultProxy(cloud.port) as proxy:
            started = []

            def cut_on_second_call(event):
                if isinstance(event, CallStarted):
                    started.append(event)
                    if len(started) == 2:
                        proxy.mode = "cut"

            result, calls = decode(slm, proxy.target, on_event=cut_on_second_call)
        assert calls[0].ok, "the first call went through the healthy proxy"
        assert result.degraded
        assert result.llm_tokens >= calls[0].received_tokens > 0
        llm_text = "".join(t for author, t in result.spans if author == "llm")
        assert llm_text, "the LLM text spliced before the cut was kept"


def test_cloud_restart_loses_its_caches_and_the_edge_resends(slm, smollm2_path):
    """A restarted cloud has no session caches: the delta is refused and the edge resends the prefix."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.events import CallStarted

    first = ServerThread(LlamaCppBackend(str(smollm2_path), n_ctx=1024, max_sessions=4))
    first.__enter__()
    port = first.port
    state = {"server": first, "calls": 0}

    def restart_after_first_call(event):
        if isinstance(event, CallStarted):
            state["calls"] += 1
            if state["calls"] == 2:  # the second call will find an empty cache
                state["server"].stop()
                state["server"] = ServerThread(LlamaCppBackend(str(smollm2_path), n_ctx=1024, max_sessions=4),
                                               port=port)
                state["server"].__enter__()

    try:
        result, calls = decode(slm, f"127.0.0.1:{port}", on_event=restart_after_first_call)
        baseline, _ = decode(slm, f"127.0.0.1:{port}")
    finally:
        state["server"].stop()
    assert len(calls) >= 2 and all(c.ok for c in calls), [c.error for c in calls]
    assert not result.degraded
    assert result.text == baseline.text, "a resend after a restart must give the same greedy text"


def test_circuit_breaker_opens_after_failures_and_closes_when_the_cloud_is_back(slm, cloud):
    from relayllm.edge.client import CircuitBreaker

    with FaultProxy(cloud.port, mode="refuse") as proxy:
        breaker = CircuitBreaker(failures=2, reset_s=3.0)  # stays open through the second request
        # a call every 2 SLM tokens: many calls in one short request
        result, calls = decode(slm, proxy.target, breaker=breaker, router=EveryK(k=2, n=2))
        assert result.degraded
        assert len(calls) >= 2 and breaker.opened >= 1, [c.error for c in calls]
        # While open it fails at once: no connection attempts for those calls.
        connections = proxy.connections
        _, open_calls = decode(slm, proxy.target, breaker=breaker, router=EveryK(k=2, n=2))
        errors = [str(c.error) for c in open_calls]
        assert errors and all("circuit" in e for e in errors), errors
        assert proxy.connections - connections <= 2
        proxy.mode = "pass"
        time.sleep(3.2)
        healed, healed_calls = decode(slm, proxy.target, breaker=breaker)
    assert any(c.ok for c in healed_calls), [c.error for c in healed_calls]
    assert healed.llm_tokens > 0

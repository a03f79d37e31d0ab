"""Edge hardening: asyncio cancel cuts the cloud call at once, seed 0 means random as in the
proto, a half-open breaker sends one probe, one request at a time per decoder."""

from __future__ import annotations

import threading
import time

import pytest

from edge_parts import HangingRelay

PROMPT = "Once upon a time, in a small village by the sea,"


@pytest.fixture(scope="module")
def slm(smollm2_path):
    from relayllm.edge import load_slm

    return load_slm(smollm2_path, n_ctx=512)


def test_cancelling_an_asyncio_stream_cancels_the_cloud_call_at_once(slm):
    import asyncio

    from relayllm.edge import Limits, RelayDecoder
    from relayllm.edge.client import CloudClient
    from relayllm.edge.events import CallStarted
    from relayllm.edge.routers import AlwaysLLMRouter
    from relayllm.protos.fingerprint import tokenizer_fingerprint

    hang = HangingRelay(tokenizer_fingerprint(slm))
    client = CloudClient(hang.target, deadline_s=60)
    decoder = RelayDecoder(slm, cloud=client, router=AlwaysLLMRouter(4), deadline_s=60,
                           limits=Limits(max_total_tokens=16))

    async def main():
        stream = decoder.astream(PROMPT)
        async for event in stream:
            if isinstance(event, CallStarted):
                break
        await asyncio.to_thread(hang.started.wait, 20)
        start = time.monotonic()
        await stream.aclose()
        return time.monotonic() - start

    try:
        took = asyncio.run(main())
        assert hang.cancelled.wait(5)
        assert took < 5  # not the 60 s deadline
        assert decoder.generate(PROMPT, local_only=True).slm_tokens == 16  # free again
    finally:
        client.close()
        hang.close()


def test_a_cancel_while_the_call_is_being_set_up_is_not_lost(slm):
    """The race CI once hit: the cancel lands after gRPC sent the call but before the SDK
    registered it for cancel(). Injected here by cancelling from inside stub.Help."""
    from relayllm.edge import Limits, RelayDecoder
    from relayllm.edge.client import CloudClient
    from relayllm.edge.routers import AlwaysLLMRouter
    from relayllm.protos.fingerprint import tokenizer_fingerprint

    hang = HangingRelay(tokenizer_fingerprint(slm))
    client = CloudClient(hang.target, deadline_s=60)
    decoder = RelayDecoder(slm, cloud=client, router=AlwaysLLMRouter(4), deadline_s=60,
                           limits=Limits(max_total_tokens=16))
    real_help = client.stub.Help

    def help_then_cancel(*args, **kwargs):
        call = real_help(*args, **kwargs)
        hang.started.wait(20)
        decoder.cancel()
        return call

    client.stub.Help = help_then_cancel
    try:
        start = time.monotonic()
        result = decoder.generate(PROMPT)
        took = time.monotonic() - start
        assert hang.cancelled.wait(5)
        assert took < 5, took  # not the 60 s deadline
        assert result.finish_reason == "cancelled" and result.llm_tokens == 0
    finally:
        client.close()
        hang.close()


def test_seed_zero_is_random_like_the_proto_and_other_seeds_repeat(slm):
    from relayllm.edge import Limits, RelayDecoder, Sampling

    def run(seed):
        slm.reset()
        return RelayDecoder(slm, sampling=Sampling(temperature=1.5, seed=seed),
                            limits=Limits(max_total_tokens=24)).generate(PROMPT).text

    assert run(7) == run(7)
    assert len({run(0) for _ in range(3)}) > 1
    with pytest.raises(ValueError, match="seed"):
        Sampling(seed=-1)


def test_half_open_breaker_sends_one_probe_not_one_per_caller():
    from relayllm.edge.client import CircuitBreaker

    breaker = CircuitBreaker(failures=1, reset_s=0.05)
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()
    time.sleep(0.1)
    probes = []
    release = threading.Event()

    def probe():
        probes.append(1)
        release.wait(5)
        return True

    answers = []
    threads = [threading.Thread(target=lambda: answers.append(breaker.allow(probe))) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.2)
    release.set()
    for t in threads:
        t.join()
    assert len(probes) == 1 and answers.count(True) == 1
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()  # on trial: one failure opens it again
    assert breaker.state == "open"


def test_one_request_at_a_time_per_decoder(slm):
    from relayllm.edge import DecoderBusy, EdgeError, Limits, RelayDecoder

    decoder = RelayDecoder(slm, limits=Limits(max_total_tokens=8))
    first = decoder.stream(PROMPT)
    next(first)
    with pytest.raises(DecoderBusy, match="one request at a time"):
        next(decoder.stream(PROMPT))
    assert issubclass(DecoderBusy, EdgeError)
    first.close()
    assert decoder.generate(PROMPT).slm_tokens == 8


def test_a_span_longer_than_the_clouds_per_call_limit_is_served_in_calls_the_cloud_accepts(slm, smollm2_path):
    """The llm mode asks for the whole answer at once; a cloud serves at most its Info's
    max_tokens_per_call per call and refuses more (INVALID_ARGUMENT). The SDK asks for what
    the cloud serves, then calls again: the LLM writes every token and no call is refused
    (before the fix each call was refused and the SLM wrote a token between refusals)."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge import Limits, RelayDecoder
    from relayllm.edge.client import CloudClient
    from relayllm.edge.events import CallStarted
    from relayllm.edge.routers import AlwaysLLMRouter
    from relayllm.edge.sampling import Sampling

    backend = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=2, n_threads=1)
    try:
        with ServerThread(backend, config=ServerConfig(max_tokens_per_call=8)) as server:
            client = CloudClient(server.target, deadline_s=60)
            decoder = RelayDecoder(slm, cloud=client, router=AlwaysLLMRouter(64), deadline_s=60,
                                   sampling=Sampling(temperature=0.0),
                                   limits=Limits(max_calls=10, max_total_tokens=24, max_llm_tokens=24))
            events = list(decoder.stream(PROMPT))
            client.close()
    finally:
        backend.close()
    result = events[-1]
    asked = [e.requested_tokens for e in events if isinstance(e, CallStarted)]
    assert not result.degraded, result.degraded_reasons
    assert result.slm_tokens == 0 and result.llm_tokens > 8
    assert asked and max(asked) == 8 and len(asked) >= 2

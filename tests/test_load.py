"""Load on loopback (issue 6): many concurrent sessions against the llama.cpp backend.

More sessions than the backend's session cache holds, so sessions are evicted and their
edges must resend (FAILED_PRECONDITION, then the whole prefix), never get wrong text.
Prints requests per second, p50/p95/p99 Help latency, errors and peak memory; asserts no
errors and memory bounded by the session cache (a second, longer wave of the same load
does not grow the peak). The long variant (`pytest --long`) runs more sessions for longer,
past what the server admits: it must shed load with a clear status and keep latency bounded.
"""

from __future__ import annotations

import json

import pytest

from relayllm.training.bench.cloud import run_load


@pytest.fixture(scope="module")
def cloud(smollm2_path):
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    config = ServerConfig(max_sessions=4, max_sessions_per_tenant=64, max_concurrent_streams=128)
    with ServerThread(BatchedLlamaCppBackend(str(smollm2_path), n_ctx=1024, max_sessions=4, n_threads=1), config=config) as server:
        yield server


def show(name, report):
    d = report.as_dict()
    print(f"\n[load] {name}: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}))


def check(report):
    assert report.requests > 0
    assert report.errors == 0, report.errors_by_code
    assert report.latency_p50_s <= report.latency_p95_s <= report.latency_p99_s


def test_sixteen_sessions_over_a_four_session_cache(cloud):
    first = run_load(cloud.target, sessions=16, calls_per_session=3, max_tokens=4, delta_chars=60)
    show("16 sessions x 3 calls", first)
    check(first)
    assert first.resends > 0, "16 sessions over a 4-session cache must evict some"
    second = run_load(cloud.target, sessions=16, calls_per_session=6, max_tokens=4, delta_chars=60)
    show("16 sessions x 6 calls", second)
    check(second)
    # Memory is bounded by the session cache, not by the number of sessions or calls made.
    assert second.peak_rss_mib <= first.peak_rss_mib + 64, (first.peak_rss_mib, second.peak_rss_mib)


@pytest.mark.long
def test_sixty_four_sessions_for_a_minute(cloud):
    report = run_load(cloud.target, sessions=64, duration_s=60, max_tokens=8, delta_chars=120)
    show("64 sessions x 60 s", report)
    # overload (64 sessions on one llama.cpp thread and a 4-session cache): the server sheds
    # what waits past max_queue_s with RESOURCE_EXHAUSTED (the edge's SLM goes on alone), so
    # latency stays bounded; nothing else may fail
    assert report.requests > report.errors
    assert set(report.errors_by_code) <= {"refused:RESOURCE_EXHAUSTED"}, report.errors_by_code
    assert report.latency_p50_s <= report.latency_p95_s <= report.latency_p99_s
    assert report.latency_p99_s <= cloud.config.max_queue_s + 10


def test_prefill_first_times_calls_that_only_decode(smollm2_path):
    """The benchmark's sweep against llama.cpp's batched decode (cloud_scale.against_anchor)
    prefills every session's prompt before its clock starts: no engine step after that may
    carry a prompt token, and the prefill phase is reported apart."""
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread
    from relayllm.training.bench.cloud_scale import SWEEP_PROMPT

    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=4, n_threads=1)
    with ServerThread(backend, config=ServerConfig(max_sessions=4, max_sessions_per_tenant=4)) as server:
        report = run_load(server.target, sessions=4, calls_per_session=2, max_tokens=8, delta_chars=0,
                          prompt=SWEEP_PROMPT, prefill_first=True)
    show("4 sessions, prefilled first", report)
    check(report)
    assert report.prefill_s > 0 and report.generated_tokens == 4 * 2 * 8
    steps = list(backend.engine.history)
    before = [s for s in steps if s.ended_at <= report.started_at]
    after = [s for s in steps if s.ended_at > report.started_at]
    assert sum(s.prefill_tokens for s in before) >= 4 * 10, "the prompts were prefilled before the clock"
    assert after and all(s.prefill_tokens == 0 for s in after), [s.prefill_tokens for s in after]
    assert max(len(s.decode_seqs) for s in after) == 4, "the four sessions decode together"

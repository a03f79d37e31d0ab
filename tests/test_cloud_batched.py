"""The batched llama.cpp backend (issue 12): sessions share one model and one KV cache, one
sequence each, and are decoded together in one batch per step.

Greedy output of sessions decoded together equals each session decoded alone (the
context-per-session backend, one call at a time), deltas still prefill only what is new,
and the engine really batched (fewer decode steps than tokens).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite fruit is",
           "The largest planet is", "Water boils at"]


@pytest.fixture(scope="module")
def batched(smollm2_path):
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend

    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=6, n_threads=1)
    yield backend
    backend.close()


def two_calls(client, prompt):
    session = client.session()
    first = "".join(p.text for p in session.help(text=prompt, max_tokens=12))
    second = "".join(p.text for p in session.help(text=prompt + first + " And", max_tokens=6))
    return first, second, session.last_done.usage


def test_batched_greedy_output_equals_single_session_output(batched, smollm2_path):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    alone = LlamaCppBackend(str(smollm2_path), n_ctx=512, max_sessions=1, n_threads=1)
    try:
        with ServerThread(alone) as server, CloudClient(server.target, deadline_s=120) as client:
            expected = [two_calls(client, p)[:2] for p in PROMPTS]  # one session at a time
    finally:
        alone.close()
    steps, tokens = batched.engine.steps, batched.engine.batched_tokens
    with ServerThread(batched) as server, CloudClient(server.target, deadline_s=120) as client:
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: two_calls(client, p), PROMPTS))
    assert [(a, b) for a, b, _ in together] == expected
    assert len({a for a, _ in expected}) == len(PROMPTS)
    steps, tokens = batched.engine.steps - steps, batched.engine.batched_tokens - tokens
    assert tokens / steps > 1.5, (tokens, steps)  # sessions shared decode steps
    for (first, _, usage), prompt in zip(together, PROMPTS):  # the second call prefilled only its delta
        held = len(batched.tokenize((prompt + first).encode()))
        assert usage.reused_tokens == held
        assert usage.prefilled_tokens == len(batched.tokenize((prompt + first + " And").encode())) - held


def test_an_evicted_sequence_is_reused_without_its_old_cells(batched):
    """A new session on a recycled sequence id answers as a fresh one (the old cells are gone)."""
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    with ServerThread(batched) as server, CloudClient(server.target, deadline_s=120) as client:
        reference = "".join(p.text for p in client.session().help(text="The sky is", max_tokens=8))
        for i in range(batched.sessions.capacity + 2):  # every sequence id changes hands
            list(client.session().help(text=f"Session number {i} says", max_tokens=3))
        assert "".join(p.text for p in client.session().help(text="The sky is", max_tokens=8)) == reference

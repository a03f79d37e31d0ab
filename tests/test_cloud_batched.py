"""The batched llama.cpp backend (issues 12, 20): sessions share one model, one sequence (and KV
stream) each, and every session with a token to decode is in one forward pass.

Greedy output of sessions decoded together equals each session decoded alone (the
context-per-session backend, one call at a time), deltas still prefill only what is new; a
step holds every ready session in one forward pass (passes counted by llama.cpp's graph
callback, tokens by its perf counters; the engine orders a step by sequence id, so one KV
stream per sequence is one pass, and a gap in the ids costs one pass more);
a long prefill is spread over bounded steps that each carry a decoding session's token.
"""

from __future__ import annotations

import math
import threading
import time
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
        held = len(batched.tokenize((prompt + first).encode())) - 1  # and the first call's last token,
        assert usage.reused_tokens == held  # which a call leaves for the next call to evaluate
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


def _generate(backend, key, tokens, max_new_tokens, *, stop=lambda: None, emit=lambda t: None):
    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.sessions import Session

    return backend.generate(Session(key=("", key)), tokens, max_new_tokens=max_new_tokens, sampling=SamplingParams(),
                            should_stop=stop, emit=emit)


def test_a_step_holds_every_ready_session_in_one_forward_pass(smollm2_path):
    """8 sessions decoding at once: (generations stay in the engine) the decode steps hold all 8
    but at the edges, each in one forward pass, counted by llama.cpp's graph
    callback; llama.cpp's perf counters saw the tokens the engine batched."""
    import llama_cpp

    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend

    n = 8
    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=256, max_sessions=n, n_threads=1, count_passes=True)
    try:
        prompts = [backend.tokenize(p.encode()) for p in PROMPTS + ["The moon is", "In 1492,"]]
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda i: _generate(backend, f"s{i}", prompts[i], 24), range(n)))
        engine = backend.engine
        history = list(engine.history)
        llama_cpp.llama_synchronize(engine.ctx.ctx)  # the counters follow a decode once it is synchronized
        perf = llama_cpp.llama_perf_context(engine.ctx.ctx)
    finally:
        backend.close()
    single = sum(1 for r in history if len(r.decode_seqs) + r.prefill_tokens == 1)  # 1-token decodes
    assert perf.n_p_eval == engine.batched_tokens - single and perf.n_eval == max(1, single)
    decode_steps = [r for r in history if not r.prefill_tokens]
    full = [r for r in decode_steps if len(r.decode_seqs) == n]
    # prompts go in one a step, so sessions start a step apart; once every one has started, each
    # step holds every session still generating: all 8 until the first ends, then fewer, never more
    last_prompt = max(i for i, r in enumerate(history) if r.prefill_tokens)
    counts = [len(r.decode_seqs) for r in history[last_prompt + 1:]]
    assert counts[:8] == [n] * 8 and counts == sorted(counts, reverse=True), counts
    assert [r.passes for r in full] == [1] * len(full)
    # every step: one pass per run of consecutive ids among its decoding sessions, and one more
    # for a prompt (one prompt a step, its own KV stream). A session takes its id when its call
    # opens it but hands its prompt in when its thread gets there, so prompts can arrive out of
    # id order: while session 4's prompt waits, 0-3 and 5 decode as two runs (a CI run saw it)
    assert all(len(r.prefill_seqs) <= 1 for r in history)
    assert [r.passes for r in history] == [_runs(r.decode_seqs) + bool(r.prefill_tokens) for r in history], \
        [(r.decode_seqs, r.prefill_seqs, r.passes) for r in history if r.passes > 1]


def _runs(ids) -> int:
    """Runs of consecutive increasing ids: (0, 1, 2, 3, 5) -> 2."""
    return sum(1 for i, seq in enumerate(ids) if i == 0 or seq != ids[i - 1] + 1)


@pytest.mark.parametrize("kv_unified", [True, False])
@pytest.mark.parametrize("gap", [False, True])
def test_a_step_of_sequences_in_any_order_is_one_pass(smollm2_path, kv_unified, gap):
    """The same step - 8 sequences, one token each, handed in with ids in decreasing order as
    calls happen to arrive - is one forward pass: with one unified KV stream in any order, with
    a stream per sequence (the default) because the engine sorts the step by id. llama.cpp cuts
    a per-sequence batch at every gap in the ids, so with sequence 3 missing it is two passes
    there (the engine hands out the lowest free id so that sessions in use stay one run)."""
    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend, _Step

    n = 8
    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=128, max_sessions=n, n_threads=1,
                                     kv_unified=kv_unified, count_passes=True)
    engine = backend.engine
    seqs = [seq for seq in range(n) if not (gap and seq == 3)]
    try:
        prompt = backend.tokenize(b"The capital of France is")
        for seq in seqs:
            engine.run(_Step(seq, prompt, 0, None, None))
        steps = [_Step(seq, [prompt[-1]], len(prompt), None, backend.file.sampler(SamplingParams(), backend.n_vocab))
                 for seq in reversed(seqs)]
        with engine._cond:  # hand them in at once, as one step
            engine._pending.extend(steps)
            engine._cond.notify()
        for step in steps:
            assert step.done.wait(60) and step.error is None
        last = engine.history[-1]
    finally:
        backend.close()
    assert sorted(last.decode_seqs) == seqs
    assert len({step.token for step in steps}) == 1  # the same prompt everywhere: the same next token
    assert last.passes == (2 if gap and not kv_unified else 1), last


def test_sessions_take_the_lowest_free_sequence_id(smollm2_path):
    """Ids stay one run: a released id is the next one handed out, before any higher one."""
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
    from relayllm.cloud.sessions import Session

    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=64, max_sessions=4, n_threads=1)
    try:
        sessions = [Session(key=("", f"s{i}")) for i in range(4)]
        for s in sessions[:3]:
            backend._open(s)
        assert [s.state["seq"] for s in sessions[:3]] == [0, 1, 2]
        backend._release(sessions[1])
        backend._open(sessions[3])
        assert sessions[3].state["seq"] == 1
    finally:
        backend.close()


def test_a_long_prefill_does_not_starve_a_decoding_session(smollm2_path):
    """Bound: while another session prefills 512 tokens, every step carries the decoding
    session's token and at most prefill_chunk prompt tokens
    (ceil(512 / chunk) steps), so the decoding session's longest gap between two tokens stays
    under a quarter of the whole prefill's time (one step of all 512, as before, is all of it).
    512, not more: on this CPU prefill costs about what decode does per token (~60 tok/s on
    one thread), so 1,500 tokens would take half a minute."""
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend

    chunk = 32
    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=2048, max_sessions=2, n_threads=1, prefill_chunk=chunk)
    try:
        counting = backend.tokenize(b"1, 2, 3, 4, 5, 6, 7, 8, 9, 10,")
        long_prompt = (backend.tokenize(b"The quick brown fox jumps over the lazy dog. " * 200))[:512]
        stamps: list[float] = []
        started, finished = threading.Event(), threading.Event()
        window: list[float] = []

        def on_token(_):
            stamps.append(time.perf_counter())
            if len(stamps) == 5:
                started.set()

        def long_call():
            started.wait(60)
            window.append(time.perf_counter())
            _generate(backend, "long", long_prompt, 1)
            window.append(time.perf_counter())
            finished.set()

        helper = threading.Thread(target=long_call)
        helper.start()
        stop_after = []
        finish, generated, _ = _generate(
            backend, "decoding", counting, 600, emit=on_token,
            stop=lambda: "cancelled" if finished.is_set() and (stop_after.append(1) or len(stop_after) > 3) else None)
        helper.join(60)
        history = list(backend.engine.history)
    finally:
        backend.close()
    assert finish == "cancelled", (finish, len(generated))  # still decoding when the long prefill ended
    decoding_seq, long_seq = history[0].prefill_seqs[0], None
    prefill_steps = [r for r in history if r.prefill_tokens and decoding_seq not in r.prefill_seqs]
    long_seq = prefill_steps[0].prefill_seqs[0]
    assert sum(r.prefill_tokens for r in prefill_steps) == 512
    assert len(prefill_steps) == math.ceil(512 / chunk)
    for r in prefill_steps:
        assert r.prefill_seqs == (long_seq,) and r.prefill_tokens <= chunk and r.decode_seqs in ((), (decoding_seq,))
    # the decoding session's generation stays in the engine: its token is in every such step
    missed = [i for i, r in enumerate(prefill_steps) if not r.decode_seqs]
    assert not missed, (missed, [(r.decode_seqs, round(r.seconds, 3)) for r in prefill_steps])
    gaps = [b - a for a, b in zip(stamps, stamps[1:]) if a >= window[0] and b <= window[1]]
    assert len(gaps) >= len(prefill_steps) - 2
    assert max(gaps) < 0.25 * (window[1] - window[0]), (max(gaps), window[1] - window[0])


def test_a_failing_call_ends_alone_and_the_others_decode_on(smollm2_path):
    """The engine runs every call's callbacks in its own thread: one that raises (here its
    emit, after 3 tokens) fails that call only; the sessions decoding beside it write what
    they write alone, token for token."""
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend

    backend = BatchedLlamaCppBackend(str(smollm2_path), n_ctx=256, max_sessions=7, n_threads=1)  # 7 calls
    try:
        prompts = [backend.tokenize(p.encode()) for p in PROMPTS[:3]]
        alone = [_generate(backend, f"alone{i}", prompts[i], 10)[1] for i in range(3)]

        def broken(token, seen=[]):
            seen.append(token)
            if len(seen) > 3:
                raise OSError("the client's stream broke")

        def call(i):
            if i == 0:
                with pytest.raises(OSError, match="stream broke"):
                    _generate(backend, "broken", prompts[0], 10, emit=broken)
                return None
            return _generate(backend, f"together{i}", prompts[i], 10)[1]

        with ThreadPoolExecutor(3) as pool:
            together = list(pool.map(call, range(3)))
        assert together[1:] == alone[1:]
        assert _generate(backend, "after", prompts[0], 10)[1] == alone[0]  # the engine goes on
    finally:
        backend.close()

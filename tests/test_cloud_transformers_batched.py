"""The transformers backend with continuous batching (issue 12): transformers' own
ContinuousBatchingManager behind the relay service, on a tiny random Llama on the CPU.

Greedy output of 4 sessions served together equals each session served alone by the
per-session backend (and transformers' own generate), the manager really decoded them in
shared forward passes, a session's next call prefills only past the pages the manager's
prefix sharing kept, a cancelled call stops its request in the manager, and a sampled
call (the per-session path) still works beside it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers.generation.continuous_batching")

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "My favourite fruit is"]


@pytest.fixture(scope="module")
def batched(tiny_model_dir):
    from relayllm.cloud.backends.hf_batched import BatchedTransformersBackend

    backend = BatchedTransformersBackend(tiny_model_dir, max_sessions=8, page_size=8)
    yield backend
    backend.close()


class ForwardCounter:
    """Counts the model's forward passes and the tokens each one ran (and can slow each one
    down, to time a cancel)."""

    def __init__(self, model, delay_s: float = 0.0):
        self.calls, self.delay_s, self.tokens = 0, delay_s, []
        self._lock = threading.Lock()
        self._handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        with self._lock:
            self.calls += 1
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens.append(ids.shape[-1] if ids is not None else 0)
        if self.delay_s:
            time.sleep(self.delay_s)

    def remove(self):
        self._handle.remove()


def two_calls(client, tokenize, prompt):
    session = client.session()
    ids = tokenize(prompt.encode())
    first = [p.token_id for p in session.help(tokens=ids, max_tokens=10)]
    whole = ids + first + tokenize(b" And")  # SmolLM2 adds no BOS
    second = [p.token_id for p in session.help(tokens=whole, max_tokens=6)]
    return first, second, session.last_done.usage, len(whole)


def test_four_sessions_batched_equal_each_session_alone(batched, tiny_model_dir):
    from relayllm.cloud.backends.hf import TransformersBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    alone = TransformersBackend(tiny_model_dir, max_sessions=1)
    with ServerThread(alone) as server, CloudClient(server.target, deadline_s=120) as client:
        expected = [two_calls(client, alone.tokenize, p)[:2] for p in PROMPTS]  # one session at a time
    counter = ForwardCounter(batched.model)
    try:
        with ServerThread(batched) as server, CloudClient(server.target, deadline_s=120) as client:
            assert client.info().backend == "transformers-batched"
            with ThreadPoolExecutor(len(PROMPTS)) as pool:
                together = list(pool.map(lambda p: two_calls(client, batched.tokenize, p), PROMPTS))
    finally:
        counter.remove()
    assert [(a, b) for a, b, _, _ in together] == expected
    assert len({tuple(a) for a, _ in expected}) == len(PROMPTS)
    generated = sum(len(a) + len(b) for a, b, _, _ in together)
    assert counter.calls < generated / 1.5, (counter.calls, generated)  # sessions shared forward passes
    for first, _, usage, whole in together:  # the second call sent only its delta over gRPC
        assert usage.reused_tokens + usage.prefilled_tokens == whole and usage.reused_tokens > len(first)
    # and the same as transformers' own greedy generate on the whole context
    context = batched.tokenize(PROMPTS[0].encode()) + together[0][0] + batched.tokenize(b" And")
    with torch.inference_mode():
        out = alone.model.generate(torch.tensor([context]), max_new_tokens=6, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)
    assert together[0][1] == out[0, len(context):].tolist()


def test_a_sessions_next_call_recomputes_only_past_the_pages_it_shares(batched):
    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.sessions import Session

    session, greedy = Session(key=("t", "prefix")), SamplingParams()
    prompt = batched.tokenize(b"A short story about a lighthouse keeper who found a bottle on the shore. Chapter one:")
    first: list[int] = []
    batched.generate(session, prompt, max_new_tokens=6, sampling=greedy, should_stop=lambda: None, emit=first.append)
    whole = prompt + first + batched.tokenize(b" The keeper")
    counter = ForwardCounter(batched.model)
    try:
        batched.generate(session, whole, max_new_tokens=2, sampling=greedy, should_stop=lambda: None,
                         emit=lambda token: None)
    finally:
        counter.remove()
    # the first call wrote len(prompt) + 5 tokens' KV (the last one written is never run): its
    # complete pages of 8 are shared, only the rest of the context is prefilled
    shared = (len(prompt) + len(first) - 1) // 8 * 8
    assert shared >= 8 and counter.tokens[0] == len(whole) - shared, (counter.tokens, len(whole))


def test_a_cancelled_call_stops_its_request_in_the_manager(batched):
    from relayllm.cloud.harness import ServerThread
    from relayllm.protos import relay_pb2 as pb
    from relayllm.protos import relay_pb2_grpc as pbg

    counter = ForwardCounter(batched.model, delay_s=0.02)  # 250 steps would take 5 s or more
    try:
        with ServerThread(batched) as server:
            channel = grpc.insecure_channel(server.target)
            call = pbg.RelayStub(channel).Help(pb.HelpRequest(
                session_id="cancel-me", context=pb.Context(text="Once upon a time"), max_tokens=250), timeout=120)
            next(call)
            call.cancel()
            time.sleep(1.0)  # the manager sees the cancel at its next step
            settled = counter.calls
            time.sleep(0.5)
            assert counter.calls == settled, "the manager kept decoding a cancelled request"
            assert settled < 100
            channel.close()
    finally:
        counter.remove()


def test_sampled_calls_take_the_per_session_path_beside_the_manager(batched):
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    kw = dict(text="Hello", max_tokens=6, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    with ServerThread(batched) as server, CloudClient(server.target, deadline_s=60) as client:
        session = client.session()
        first = "".join(p.text for p in session.help(**kw))
        assert first and first == "".join(p.text for p in client.session().help(**kw))
        # then greedy on the same session: back to the manager, the stale per-session cache dropped
        greedy = [p.token_id for p in session.help(text="Hello" + first + " and", max_tokens=4)]
        fresh = [p.token_id for p in client.session().help(text="Hello" + first + " and", max_tokens=4)]
        assert greedy == fresh

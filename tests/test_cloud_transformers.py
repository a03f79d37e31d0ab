"""The transformers backend: a tiny random Llama with SmolLM2's tokenizer, served over gRPC.

The tokenizer comes from the SmolLM2 GGUF (transformers reads GGUF), so its fingerprint
must equal llama.cpp's on the same file; the KV reuse must give the same greedy tokens as
a fresh session on the whole context.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    from relayllm.cloud.backends.hf import TransformersBackend

    return TransformersBackend(tiny_model_dir, max_sessions=3)


@pytest.fixture(scope="module")
def client(backend):
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient

    with ServerThread(backend) as server, CloudClient(server.target, deadline_s=60) as client:
        yield client


def test_fingerprint_and_tokens_agree_with_llama_cpp(backend, smollm2_path):
    import llama_cpp

    from relayllm.protos.fingerprint import tokenizer_fingerprint

    llama = llama_cpp.Llama(str(smollm2_path), n_ctx=64, verbose=False, vocab_only=True)
    assert backend.fingerprint == tokenizer_fingerprint(llama)
    text = "Question: 12+30=? Answer: 42.\n<|im_end|> é"
    assert backend.tokenize(text.encode()) == llama.tokenize(text.encode(), add_bos=True, special=True)


def test_second_call_prefills_only_the_delta(client, backend):
    session = client.session()
    prompt = backend.tokenize(b"The capital of France is")
    generated = [p.token_id for p in session.help(tokens=prompt, max_tokens=4)]
    assert len(generated) == session.last_done.usage.generated_tokens
    delta = backend.tokenize(b" and Berlin")
    list(session.help(tokens=prompt + generated + delta, max_tokens=3))
    usage = session.last_done.usage
    assert usage.reused_tokens == len(prompt) + len(generated) and usage.prefilled_tokens == len(delta)


def test_kv_reuse_gives_the_same_greedy_tokens_as_a_fresh_session(client, backend):
    prompt = backend.tokenize(b"Once upon a time")
    session = client.session()
    generated = [p.token_id for p in session.help(tokens=prompt, max_tokens=5)]
    context = prompt + generated + backend.tokenize(b" there was")
    reused = [p.token_id for p in session.help(tokens=context, max_tokens=5)]
    fresh = [p.token_id for p in client.session().help(tokens=context, max_tokens=5)]
    assert reused == fresh and session.last_done.usage.reused_tokens > 0
    # And the same as transformers' own greedy generate on the whole context.
    with torch.inference_mode():
        out = backend.model.generate(torch.tensor([context]), max_new_tokens=5, do_sample=False,
                                     eos_token_id=None, pad_token_id=0)
    assert fresh == out[0, len(context):].tolist()


def test_seeded_sampling_repeats_and_text_mode_works(client):
    kw = dict(text="Hello", max_tokens=6, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    first = "".join(p.text for p in client.session().help(**kw))
    second = "".join(p.text for p in client.session().help(**kw))
    assert first and first == second
    assert client.info().backend == "transformers"

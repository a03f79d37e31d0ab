"""The relay protocol end to end: an SLM that writes `<call>N</call>` in the middle of its
answer, through the edge SDK (llama.cpp) and a real gRPC cloud, and GRPO's rollout (torch)
against the same cloud: the same text, the same calls, the same LLM spans.

The models are crafted bigram Llamas (tests/relay_models.py): the SLM writes "5", then
`<call>2</call>`; the LLM, shown the prompt and "5" (the command removed), writes ";#"; the
SLM ends with "8". Exported to GGUF by the project's own exporter (llama.cpp's converter).
"""

from __future__ import annotations

import pytest
import torch

import relay_models as rm



@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.training.models.export import export

    root = tmp_path_factory.mktemp("parity")
    slm_dir, llm_dir = rm.save_pair(root, rm.SLM_WRITES_A_COMMAND)
    slm_gguf = export(slm_dir, root, name="slm", quants=())["f16"]
    llm_gguf = export(llm_dir, root, name="llm", quants=())["f16"]
    server = ServerThread(LlamaCppBackend(str(llm_gguf)))
    try:
        yield {"slm_dir": slm_dir, "slm_gguf": slm_gguf, "target": server.target, "tok": rm.tokenizer()}
    finally:
        server.__exit__(None, None, None)


def edge_answer(pair, command_context: str):
    from relayllm.edge import Limits, RelayDecoder, Sampling
    from relayllm.edge.client import CloudClient

    client = CloudClient(pair["target"])
    try:
        decoder = RelayDecoder(str(pair["slm_gguf"]), cloud=client, sampling=Sampling(temperature=0.0),
                               limits=Limits(max_total_tokens=16, max_calls=2), n_ctx=64,
                               command_context=command_context)
        result = decoder.generate(rm.PROMPT)
        context = [int(t) for t in decoder.slm.input_ids[: decoder.slm.n_tokens]]
        return result, context
    finally:
        client.close()


def ids(tok, *pieces):
    return [rm._id(tok, p) for p in pieces]


@pytest.mark.parametrize("command_context", ["keep", "drop"])
def test_an_slm_that_writes_a_command_mid_answer_through_the_sdk_and_a_real_cloud(pair, command_context):
    result, context = edge_answer(pair, command_context)
    assert result.spans == [("slm", "5"), ("llm", ";#"), ("slm", "8")]
    assert result.text == "5;#8" and result.finish_reason == "eos" and not result.degraded
    assert (result.calls, result.llm_tokens, result.slm_tokens) == (1, 2, 5)  # 5 <call> 2 </call> ... 8
    tok = pair["tok"]
    prompt = tok.encode(rm.PROMPT, add_special_tokens=False)
    command = ids(tok, "<call>", "2", "</call>")
    # the SLM's context after the splice: the LLM's tokens follow the command, or replace it
    kept = command if command_context == "keep" else []
    assert context == prompt + ids(tok, "5") + kept + ids(tok, ";", "#", "8")


@pytest.mark.parametrize("engine", ["one", "group"])
@pytest.mark.parametrize("command_context", ["keep", "drop"])
def test_a_grpo_rollout_writes_what_the_edge_writes(pair, command_context, engine):
    """Both command contexts (drop is the default relay SLM's), both rollout engines (one
    sample on its own cache; a group on one padded batch): the edge's text, calls, LLM spans,
    and the context the SLM went on from."""
    from relayllm.protos.grammar import remove_command_ids
    from relayllm.training.relay.grpo import RelayRollout
    from relayllm.training.relay.helper_llm import CloudLLM
    from transformers import AutoModelForCausalLM

    tok = pair["tok"]
    model = AutoModelForCausalLM.from_pretrained(pair["slm_dir"]).eval()
    helper = CloudLLM(pair["target"], tok)
    prompt = tok.encode(rm.PROMPT, add_special_tokens=False)
    try:
        rollout = RelayRollout(tok, helper, max_tokens=16, max_calls=2, temperature=0.0,
                               command_context=command_context)
        if engine == "one":
            out = rollout.rollout_one(model, prompt, torch.Generator())
        else:  # the same prompt three times in one batch: every row must be the edge's answer
            group = rollout.rollout_group(model, [prompt] * 3, torch.Generator())
            assert group[1:] == group[:1] * 2
            out = group[0]
    finally:
        helper.close()
    assert helper.stats.failures == 0
    edge, edge_context = edge_answer(pair, command_context)
    completion, authors = out["completion_ids"], out["authors"]
    llm_span = tok.decode([t for t, a in zip(completion, authors) if a], skip_special_tokens=True)
    open_id, close_id = ids(tok, "<call>", "</call>")
    text = tok.decode(remove_command_ids(completion, open_id, close_id), skip_special_tokens=True)
    assert text == edge.text == "5;#8"
    assert out["calls"] == edge.calls == 1 and out["requested"] == 2
    assert [llm_span] == [t for author, t in edge.spans if author == "llm"]
    # the SLM's context at the end: the command dropped exactly where the edge dropped it
    dropped = [i for a, b in out["dropped"] for i in range(a, b + 1)]
    context = prompt + [t for i, t in enumerate(completion) if i not in dropped and t != tok.eos_token_id]
    assert context == edge_context
    assert bool(out["dropped"]) == (command_context == "drop")

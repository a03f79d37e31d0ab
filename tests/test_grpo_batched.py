"""GRPO's batched rollouts (training/relay/batched_decode.py): a group decoded together, one
forward per step for all rows, writes greedily what each row writes decoded alone, token for
token, with the same log-probs, calls and dropped commands: prompts of different lengths,
rows that call and rows that do not, both command contexts, rows that end early."""

from __future__ import annotations

import pytest
import relay_models as rm
import torch

from relayllm.training.relay import grpo
from relayllm.training.relay.batched_decode import PaddedBatch
from relayllm.training.relay.helper_llm import LocalLLM

# writes "5", calls for 2 after "5" only when the prompt's last token is ":" (the bigram's
# successors); attention noise makes every log-prob depend on what the row can see
SLM = {":": ["5"], "5": ["<call>"], "<call>": ["2"], "2": ["</call>"], "#": ["8"], "8": ["EOS"], "=": ["7"],
       "7": ["#"]}


@pytest.fixture(scope="module")
def tok():
    return rm.tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    return rm.attentive_pair(tok, SLM, seed=3, scale=0.3)


PROMPTS = ["1+1:", "12+30:", "2=", "7+7+7+7:", "3:"]


@pytest.mark.parametrize("command_context", ["keep", "drop"])
def test_batched_greedy_rollouts_equal_unbatched_ones(tok, models, command_context):
    slm, llm = models
    rollout = grpo.RelayRollout(tok, LocalLLM(llm, tok), max_tokens=14, max_calls=2, temperature=0.0,
                                command_context=command_context)
    prompts = [tok.encode(p, add_special_tokens=False) for p in PROMPTS]
    assert len({len(p) for p in prompts}) > 2  # padding is exercised
    alone = [rollout.rollout_one(slm, p, torch.Generator()) for p in prompts]
    together = rollout.rollout_group(slm, prompts, torch.Generator())
    assert any(r["calls"] for r in alone) and any(not r["calls"] for r in alone)
    assert len({len(r["completion_ids"]) for r in alone}) > 1  # rows end at different steps
    if command_context == "drop":
        assert any(r["dropped"] for r in alone)
    for a, b in zip(alone, together):
        assert b["completion_ids"] == a["completion_ids"]
        assert (b["authors"], b["calls"], b["requested"], b["dropped"]) == (a["authors"], a["calls"], a["requested"],
                                                                            a["dropped"])
        assert b["logprobs"] == pytest.approx(a["logprobs"], abs=1e-4)


def test_a_random_model_batched_equals_unbatched(tok):
    """No crafted transitions: a random tiny Llama writes free text (no command), 2 layers,
    so a padding slot that leaked into any row's attention would change its tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                                         eos_token_id=tok.eos_token_id)).eval()
    rollout = grpo.RelayRollout(tok, LocalLLM(model, tok), max_tokens=12, temperature=0.0)
    prompts = [tok.encode(p, add_special_tokens=False) for p in ("a", "hello there, how are", "1+1=2, 2+2=")]
    alone = [rollout.rollout_one(model, p, torch.Generator())["completion_ids"] for p in prompts]
    together = [r["completion_ids"] for r in rollout.rollout_group(model, prompts, torch.Generator())]
    assert together == alone and len(alone[0]) == 12


def test_the_padded_batch_gives_each_row_its_own_logits(tok):
    """The engine alone: a row fed through the batch (beside a longer one, with a cut) has the
    logits of the same context run on its own."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2, intermediate_size=32)).eval()
    batch = PaddedBatch(model, 2, pad_id=0)
    with torch.no_grad():
        batch.forward({0: [5, 6, 7], 1: [9, 10, 11, 12, 13, 14]})
        batch.forward({0: [20, 21]})  # row 1 waits (padding)
        batch.cut(0, 2)  # 20, 21 leave row 0's context
        got = batch.forward({0: [30, 31], 1: [40]}, keep=2)
        want0 = model(input_ids=torch.tensor([[5, 6, 7, 30, 31]])).logits[0, -2:]
        want1 = model(input_ids=torch.tensor([[9, 10, 11, 12, 13, 14, 40]])).logits[0, -1:]
    assert torch.allclose(got[0], want0, atol=1e-5) and torch.allclose(got[1], want1, atol=1e-5)

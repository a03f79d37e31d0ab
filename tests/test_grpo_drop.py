"""GRPO with command_context="drop": the rollout drops a called command from the SLM's context
(as the device does), and TRL's scoring pass, through training/relay/drop_context.py, gives
the SLM's tokens exactly the log-probs they were sampled with (a plain causal pass does not)."""

from __future__ import annotations

import json

import pytest
import relay_models as rm
import torch

from relayllm.training.relay import grpo
from relayllm.training.relay.drop_context import DropView, called_commands
from relayllm.training.relay.helper_llm import LocalLLM

SLM_WRITES_A_COMMAND = {":": ["5"], "5": ["<call>"], "<call>": ["2"], "2": ["</call>"], "#": ["8"], "8": ["EOS"]}


@pytest.fixture(scope="module")
def tok():
    return rm.tokenizer()


@pytest.fixture(scope="module")
def models(tok):
    # attention on: the SLM's log-probs now depend on what it can see
    return rm.attentive_pair(tok, SLM_WRITES_A_COMMAND, seed=1, scale=0.5)


def slm_logps(model, ids, prompt_len, completion):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[-1]
    lp = torch.log_softmax(logits.float(), -1)
    return [float(lp[prompt_len - 1 + i, t]) for i, t in enumerate(completion)]


@pytest.mark.parametrize("command_context", ["drop", "keep"])
def test_the_scoring_pass_sees_what_the_rollout_saw(tok, models, command_context):
    slm, llm = models
    rollout = grpo.RelayRollout(tok, LocalLLM(llm, tok), max_tokens=16, max_calls=2, temperature=1.0,
                                command_context=command_context)
    prompt = tok.encode(rm.PROMPT, add_special_tokens=False)
    out = rollout.rollout_one(slm, prompt, torch.Generator().manual_seed(0))
    completion, authors = out["completion_ids"], out["authors"]
    assert tok.convert_ids_to_tokens(completion)[:7] == ["5", "<call>", "2", "</call>", ";", "#", "8"]
    assert authors[:7] == [0, 0, 0, 0, 1, 1, 0]
    ids = torch.tensor([prompt + completion])
    view = DropView(slm, tok, rollout.open_id, rollout.close_id, max_calls=2)
    by_view, by_plain = slm_logps(view, ids, len(prompt), completion), slm_logps(slm, ids, len(prompt), completion)
    diff = lambda got: max(abs(a - b) for a, b, who in zip(got, out["logprobs"], authors) if who == 0)  # noqa: E731
    right, wrong = (by_view, by_plain) if command_context == "drop" else (by_plain, by_view)
    assert diff(right) < 1e-4
    assert diff(wrong) > 1e-3  # the test can tell the two views apart


def test_left_padding_does_not_change_the_drop_view(tok, models):
    slm, _ = models
    open_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    row = tok.encode(rm.PROMPT + "5", add_special_tokens=False) + [open_id] + tok.encode("2", add_special_tokens=False) \
        + [close_id] + tok.encode(";#8", add_special_tokens=False)
    pad = tok.pad_token_id
    ids = torch.tensor([row, [pad] * 3 + row[:-3]])
    mask = torch.tensor([[1] * len(row), [0] * 3 + [1] * (len(row) - 3)])
    view = DropView(slm, tok, open_id, close_id, max_calls=2)
    with torch.no_grad():
        logits = view(input_ids=ids, attention_mask=mask).logits
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits[0, : len(row) - 3], logits[1, 3:], atol=1e-4)


def test_which_commands_were_called():
    decode = lambda ids: "".join({7: "2", 8: "x"}.get(i, "?") for i in ids)  # noqa: E731
    O, C = 100, 101  # noqa: N806
    ids = [1, O, 7, C, 5, O, 7, C, 5, O, 7, C, 5]
    assert called_commands(ids, O, C, decode, max_calls=2) == [(1, 3), (5, 7)]  # the third: no calls left
    assert called_commands([1, O, 8, C, 5], O, C, decode, max_calls=2) == []  # not a command (no N)
    assert called_commands([1, O, 7, C], O, C, decode, max_calls=2) == []  # nothing after it: never called


def test_a_grpo_step_in_drop_mode(tmp_path):
    slm_dir, llm_dir = rm.save_pair(tmp_path, rm.SLM_CALLING)
    out = tmp_path / "grpo"
    grpo.run_grpo(slm_dir, llm_dir, out, rows=[{"prompt": rm.PROMPT, "answer": rm.ANSWER}], steps=1, group_size=4,
                  prompts_per_step=1, max_tokens=16, save_steps=1, lr=1e-2, progress=False, command_context="drop")
    line = json.loads((out / grpo.METRICS_FILE).read_text().splitlines()[0])
    assert line["step"] == 1 and "relay/calls_per_sample" in line


def test_trls_scoring_pass_in_drop_mode_gives_the_rollouts_log_probs(tok, models, tmp_path):
    slm, llm = models
    trainer = grpo.make_trainer(slm, tok, LocalLLM(llm, tok), [(rm.PROMPT, rm.ANSWER)], tmp_path, steps=1,
                                group_size=2, prompts_per_step=1, max_tokens=16, progress=False, kl=0.0,
                                command_context="drop")
    trainer.current_gradient_accumulation_steps = 1
    batch = trainer._generate_and_score_completions([{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 2)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].size(1)
    from trl import GRPOTrainer

    with torch.no_grad():
        scored, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)
        plain, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, width)
    sampled = batch["sampling_per_token_logps"]  # the rollout's own log-probs
    slm = (batch["completion_mask"] * batch["tool_mask"]).bool()  # the SLM's tokens
    assert (batch["completion_ids"] == tok.convert_tokens_to_ids("<call>")).any()
    # TRL's fused, chunked LM head differs from a plain softmax by a few 1e-4 (the same in keep mode)
    assert (scored[slm] - sampled[slm]).abs().max() < 2e-3
    assert (plain[slm] - sampled[slm]).abs().max() > 5e-3  # without the drop view: the wrong context


def test_two_dropped_commands_in_one_rollout(tok, models):
    _, llm = models
    slm = rm.bigram_model(tok, {":": ["5"], "5": ["<call>"], "<call>": ["1"], "1": ["</call>"], ";": ["<call>"],
                                "#": ["8"], "8": ["EOS"]})
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in slm.model.layers:
            layer.self_attn.o_proj.weight.normal_(0, 0.3)
    rollout = grpo.RelayRollout(tok, LocalLLM(llm, tok), max_tokens=16, max_calls=2, temperature=1.0,
                                command_context="drop")
    prompt = tok.encode(rm.PROMPT, add_special_tokens=False)
    out = rollout.rollout_one(slm, prompt, torch.Generator().manual_seed(0))
    completion, authors = out["completion_ids"], out["authors"]
    assert out["calls"] == 2
    assert tok.convert_ids_to_tokens(completion)[:10] == ["5", "<call>", "1", "</call>", ";", "<call>", "1", "</call>",
                                                          "#", "8"]
    view = DropView(slm, tok, rollout.open_id, rollout.close_id, max_calls=2)
    got = slm_logps(view, torch.tensor([prompt + completion]), len(prompt), completion)
    assert max(abs(a - b) for a, b, who in zip(got, out["logprobs"], authors) if who == 0) < 1e-4


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


def test_a_failed_call_leaves_its_command_in_the_rollout_and_in_the_scoring_pass(tok, models, tmp_path):
    """The cloud is down (nothing listens): the call brings nothing, so the command stays in
    the SLM's context (as on the device), and TRL's scoring pass must keep it too. The ids
    alone look like a command that was called (it is followed by tokens): the drop view reads
    the rollout's record instead."""
    from relayllm.training.relay.helper_llm import CloudLLM

    slm = rm.bigram_model(tok, {**SLM_WRITES_A_COMMAND, "</call>": ["#"]})  # alone after the command: "#8"
    torch.manual_seed(1)
    with torch.no_grad():
        for layer in slm.model.layers:
            layer.self_attn.o_proj.weight.normal_(0, 0.5)
    helper = CloudLLM(f"127.0.0.1:{_closed_port()}", tok, deadline_s=2.0)
    try:
        trainer = grpo.make_trainer(slm, tok, helper, [(rm.PROMPT, rm.ANSWER)], tmp_path, steps=1, group_size=2,
                                    prompts_per_step=1, max_tokens=10, progress=False, kl=0.0,
                                    command_context="drop")
        trainer.current_gradient_accumulation_steps = 1
        batch = trainer._generate_and_score_completions([{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 2)
    finally:
        helper.close()
    assert helper.stats.failures >= 1 and helper.stats.tokens == 0
    assert tok.convert_ids_to_tokens(batch["completion_ids"][0, :6]) == ["5", "<call>", "2", "</call>", "#", "8"]
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    width = batch["completion_ids"].size(1)
    with torch.no_grad():
        scored, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, width)
    valid = batch["completion_mask"].bool()
    sampled = batch["sampling_per_token_logps"]
    assert (scored[valid] - sampled[valid]).abs().max() < 2e-3
    # what the ids alone say (the command was called) gives other log-probs: the test can tell
    guessed = DropView(trainer.model, tok, *tok.convert_tokens_to_ids(["<call>", "</call>"]), max_calls=2)
    with torch.no_grad():
        logits = guessed(input_ids=ids, attention_mask=mask).logits[:, -width - 1:-1]
    by_ids = torch.log_softmax(logits.float(), -1).gather(-1, batch["completion_ids"][..., None])[..., 0]
    assert (by_ids[valid] - sampled[valid]).abs().max() > 5e-3

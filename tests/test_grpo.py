"""GRPO with TRL: rollouts that really call the LLM, the LLM tokens masked out of the loss,
per-step metrics, resume."""

from __future__ import annotations

import json

import pytest
import relay_models as rm
import torch

from relayllm.training.relay import grpo
from relayllm.training.errors import TrainingError
from relayllm.training.relay.checkpoints import command_ids
from relayllm.training.relay.helper_llm import LocalLLM

ROWS = [{"prompt": rm.PROMPT, "answer": rm.ANSWER}]


@pytest.fixture(scope="module")
def tok():
    return rm.tokenizer()


@pytest.fixture(scope="module")
def pair(tok):
    return rm.bigram_model(tok, rm.SLM_CALLING), rm.bigram_model(tok, rm.LLM_TRANSITIONS)


def test_rollout_really_calls_the_llm_and_marks_its_tokens(tok, pair):
    slm, llm = pair
    helper = LocalLLM(llm, tok)
    rollout = grpo.RelayRollout(tok, helper, max_tokens=16)
    ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    gen = torch.Generator().manual_seed(0)
    results = [rollout.rollout_one(slm, ids(rm.PROMPT), gen) for _ in range(12)]
    called = [r for r in results if r["calls"]]
    alone = [r for r in results if not r["calls"]]
    assert called and alone  # 50/50 at the first token
    eos = tok.eos_token_id
    for r in called:
        # the SLM writes <call>4</call>, the LLM writes "5;#8", the SLM ends
        assert r["completion_ids"] == command_ids(tok, 4) + ids("5;#8") + [eos]
        assert r["authors"] == [0, 0, 0, 1, 1, 1, 1, 0]
        assert r["requested"] == 4
    for r in alone:
        assert r["completion_ids"] == ids("5;#9") + [eos] and sum(r["authors"]) == 0
    assert helper.stats.calls == len(called) and helper.stats.tokens == 4 * len(called)
    # the log-probs are the policy's own, LLM tokens included (the bigram SLM finds ";" after "5" likely)
    assert all(len(r["logprobs"]) == len(r["completion_ids"]) for r in results)
    assert called[0]["logprobs"][0] == pytest.approx(torch.log(torch.tensor(0.5)).item(), abs=1e-3)


def _scored_batch(tok, pair, tmp_path, mask_llm_tokens=True, seed=0):
    slm, llm = pair
    trainer = grpo.make_trainer(slm, tok, LocalLLM(llm, tok), [(rm.PROMPT, rm.ANSWER)], tmp_path, steps=1,
                                group_size=6, prompts_per_step=1, mask_llm_tokens=mask_llm_tokens, max_tokens=16,
                                seed=seed, progress=False)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, which this test does not run
    inputs = [{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 6
    return trainer, trainer._generate_and_score_completions(inputs)  # TRL is pinned: its rollout + scoring


def test_llm_tokens_have_zero_loss_weight(tok, pair, tmp_path):
    trainer, batch = _scored_batch(tok, pair, tmp_path)
    open_id = tok.convert_tokens_to_ids("<call>")
    called_rows = (batch["completion_ids"][:, 0] == open_id).nonzero().flatten().tolist()
    assert called_rows and len(called_rows) < 6  # some samples called, some did not
    mask = batch["tool_mask"] * batch["completion_mask"]
    for row in called_rows:  # <call> 4 </call> | 5 ; # 8 (LLM) | EOS
        assert mask[row, :8].tolist() == [1, 1, 1, 0, 0, 0, 0, 1]
    assert batch["advantages"].abs().sum() > 0  # case B: calls rewarded, wrong alone punished

    def loss(b):
        with torch.no_grad():
            return float(trainer.compute_loss(trainer.model, b))

    masked = loss(batch)
    # same as a batch where those tokens are simply not completion tokens for the loss
    folded = {k: v for k, v in batch.items() if k != "tool_mask"}
    folded["completion_mask"] = batch["completion_mask"] * batch["tool_mask"]
    assert masked == pytest.approx(loss(folded), abs=1e-6)
    # keeping them (the reference's choice) changes the loss
    kept = {k: v for k, v in batch.items() if k != "tool_mask"}
    assert abs(masked - loss(kept)) > 1e-4


def test_keep_llm_tokens_option_returns_no_env_mask(tok, pair, tmp_path):
    _, batch = _scored_batch(tok, pair, tmp_path, mask_llm_tokens=False)
    assert "tool_mask" not in batch


def test_run_grpo_logs_every_step_and_resumes(tmp_path):
    slm_dir, llm_dir = rm.save_pair(tmp_path, rm.SLM_CALLING)
    out = tmp_path / "grpo"
    kw = dict(rows=ROWS, group_size=4, prompts_per_step=1, max_tokens=16, save_steps=1, lr=1e-2,
              llm_temperature=0.0, progress=False)
    grpo.run_grpo(slm_dir, llm_dir, out, steps=2, **kw)
    summary = json.loads((out / grpo.DONE_MARK).read_text())
    assert summary["steps"] == 2 and summary["helper_calls"] > 0 and summary["helper_tokens"] == 4 * summary["helper_calls"]
    assert summary["limits"] == {"training": {"max_calls": 2, "max_tokens": 16},
                                 "evaluation": {"max_calls": 4, "max_tokens": 256}}
    lines = [json.loads(x) for x in (out / grpo.METRICS_FILE).read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in ("reward", "kl", "relay/accuracy", "relay/calls_per_sample", "relay/llm_token_ratio", "relay/call_ratio"):
        assert all(key in x for x in lines), key
    assert sum(x["relay/calls_per_sample"] for x in lines) > 0
    assert all(0 < x["relay/llm_token_ratio"] < 1 for x in lines if x["relay/calls_per_sample"] > 0)
    # interrupted after step 2 of 3: continue from checkpoint-2, metrics not duplicated
    (out / grpo.DONE_MARK).unlink()
    grpo.run_grpo(slm_dir, llm_dir, out, steps=3, **kw)
    summary = json.loads((out / grpo.DONE_MARK).read_text())
    assert summary["resumed_from"].endswith("checkpoint-2") and summary["steps"] == 3
    assert [json.loads(x)["step"] for x in (out / grpo.METRICS_FILE).read_text().splitlines()] == [1, 2, 3]


def test_bad_reward_name(tmp_path):
    with pytest.raises(match="unknown reward"):
        grpo.run_grpo(tmp_path, tmp_path, tmp_path / "o", reward="nope")


def test_rollout_calls_the_llm_through_the_grpc_cloud(tok, pair, tmp_path):
    """The same rollout with the LLM behind the project's cloud service (llama.cpp backend on
    loopback, token mode): the called samples get the LLM's tokens over the wire."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.training.models import export
    from relayllm.training.relay.helper_llm import CloudLLM

    slm, llm = pair
    llm_dir = tmp_path / "llm"
    llm.save_pretrained(llm_dir)
    tok.save_pretrained(llm_dir)
    gguf = export.convert(llm_dir, tmp_path / "llm-f16.gguf", "f16")
    ids = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    with ServerThread(LlamaCppBackend(str(gguf), n_ctx=128, max_sessions=4)) as server:
        helper = CloudLLM(server.target, tok, temperature=0.0)
        try:
            rollout = grpo.RelayRollout(tok, helper, max_tokens=16)
            gen = torch.Generator().manual_seed(1)
            results = [rollout.rollout_one(slm, ids(rm.PROMPT), gen) for _ in range(8)]
        finally:
            helper.close()
    called = [r for r in results if r["calls"]]
    assert called and helper.stats.calls == len(called) and helper.stats.failures == 0
    for r in called:
        assert r["completion_ids"][:7] == command_ids(tok, 4) + ids("5;#8")
        assert r["authors"][:7] == [0, 0, 0, 1, 1, 1, 1]


def test_the_call_ratio_counts_the_n_the_slm_asked_for_not_the_capped_one(tok, pair):
    """SLM_CALLING asks for 4 tokens; with 5 response tokens in all the limits let 2 through
    (3 went to the command), with no calls left none: the penalty counts 4 either way."""
    slm, llm = pair
    ids = tok.encode(rm.PROMPT, add_special_tokens=False)
    for max_calls, served in ((2, 2), (0, 0)):
        rollout = grpo.RelayRollout(tok, LocalLLM(llm, tok), max_tokens=5, max_calls=max_calls)
        gen = torch.Generator().manual_seed(0)
        called = [r for r in (rollout.rollout_one(slm, ids, gen) for _ in range(10))
                  if r["completion_ids"][:3] == command_ids(tok, 4)]
        assert called
        for r in called:
            assert sum(r["authors"]) == served and r["calls"] == (1 if served else 0)
            assert r["requested"] == 4


def test_the_kl_reference_of_a_run_from_a_base_folder_is_the_policy_it_starts_from(tmp_path):
    """A base checkpoint without the command tokens: the policy gets two new embedding rows
    when loaded; TRL's KL reference must be that policy (new rows included), not the folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from relayllm.training.models.tiny_models import _smollm2_tokenizer_files
    from relayllm.training.relay.checkpoints import load_checkpoint

    base_tok = AutoTokenizer.from_pretrained(str(_smollm2_tokenizer_files()))
    assert "<call>" not in base_tok.get_vocab()
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(base_tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 num_key_value_heads=2, intermediate_size=16)).save_pretrained(tmp_path / "base")
    base_tok.save_pretrained(tmp_path / "base")
    model, tok = load_checkpoint(tmp_path / "base")
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(base_tok) + 2
    trainer = grpo.make_trainer(model, tok, LocalLLM(model, tok), [(rm.PROMPT, rm.ANSWER)], tmp_path / "out", steps=1,
                                group_size=2, prompts_per_step=1, max_tokens=8, progress=False, kl=0.01)
    ref = trainer.accelerator.unwrap_model(trainer.ref_model)
    policy = dict(trainer.accelerator.unwrap_model(trainer.model).named_parameters())
    for name, p in ref.named_parameters():
        assert p.shape == policy[name].shape and torch.equal(p.cpu(), policy[name].detach().cpu()), name


def test_training_limits_differ_from_the_evaluations_by_name_only(tmp_path):
    """One definition (protos/protocol.py): GRPO's defaults are TRAIN_LIMITS, the evaluation
    harness's are EVAL_LIMITS, and a run records both beside each other."""
    import inspect

    from relayllm.protos.protocol import EVAL_LIMITS, TRAIN_LIMITS
    from relayllm.training.eval.runner import Evaluator
    from relayllm.training.relay.config import GrpoConfig

    c = GrpoConfig()
    assert (c.max_calls, c.max_tokens) == (TRAIN_LIMITS.max_calls, TRAIN_LIMITS.max_tokens)
    assert inspect.signature(grpo.RelayRollout).parameters["max_calls"].default == TRAIN_LIMITS.max_calls
    assert inspect.signature(grpo.make_trainer).parameters["max_tokens"].default == TRAIN_LIMITS.max_tokens
    params = inspect.signature(Evaluator).parameters
    assert (params["max_calls"].default, params["max_tokens"].default) == (EVAL_LIMITS.max_calls,
                                                                           EVAL_LIMITS.max_tokens)
    assert TRAIN_LIMITS != EVAL_LIMITS and "TRAIN_LIMITS" in GrpoConfig.__dataclass_fields__["max_calls"].metadata["help"]


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_a_run_cut_by_its_time_budget_resumes_to_the_same_steps(tmp_path, lora_r):
    """`budget_minutes=0`: the run stops after its first step, with a checkpoint there; run
    again, it goes on and writes steps 2 and 3 exactly as a run that was never cut. With
    LoRA (the real pair's recipe) the checkpoint holds the adapter and the head's command
    rows, and the finished run the adapter beside the merged model."""
    from safetensors.torch import load_file

    slm_dir, llm_dir = rm.save_pair(tmp_path, rm.SLM_CALLING)
    kw = dict(rows=ROWS, steps=3, group_size=4, prompts_per_step=1, max_tokens=16, save_steps=10, lr=1e-2,
              llm_temperature=0.0, progress=False, lora_r=lora_r, lora_alpha=8)
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    grpo.run_grpo(slm_dir, llm_dir, whole, **kw)
    grpo.run_grpo(slm_dir, llm_dir, cut, budget_minutes=0.0, **kw)
    assert json.loads((cut / grpo.CUT_MARK).read_text())["step"] == 1 and not (cut / grpo.DONE_MARK).exists()
    assert (cut / "checkpoint-1").is_dir()
    grpo.run_grpo(slm_dir, llm_dir, cut, **kw)
    assert not (cut / grpo.CUT_MARK).exists()
    assert json.loads((cut / grpo.DONE_MARK).read_text())["resumed_from"].endswith("checkpoint-1")
    lines = {d: [json.loads(x) for x in (d / grpo.METRICS_FILE).read_text().splitlines()] for d in (whole, cut)}
    assert [x["step"] for x in lines[cut]] == [1, 2, 3]
    for a, b in zip(lines[whole], lines[cut]):
        for key in ("loss", "reward", "kl", "relay/calls_per_sample", "relay/accuracy", "relay/llm_token_ratio"):
            assert b[key] == pytest.approx(a[key], abs=1e-6), (a["step"], key)
    assert any(x["relay/calls_per_sample"] not in (0, 1) for x in lines[whole])  # the steps are not all alike
    wa, wb = load_file(whole / "model.safetensors"), load_file(cut / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    start = load_file(slm_dir / "model.safetensors")
    assert any(not torch.allclose(start[k], wa[k]) for k in start)  # training moved the weights
    if lora_r:
        from relayllm.training.relay.ship import HEAD_ROWS_FILE

        assert (cut / "checkpoint-1" / HEAD_ROWS_FILE).is_file()  # the head's command rows resume too
        # the adapter alone, without TRL's frozen copy of it (the KL reference; peft saves
        # a second adapter in a folder of its name)
        assert (whole / "adapter" / "adapter_model.safetensors").is_file() and not (whole / "adapter" / "ref").exists()

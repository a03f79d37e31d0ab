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

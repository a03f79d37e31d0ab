"""Warm-up strategy "own" (training/relay/own_path.py) on the real pair: the SLM's own answer,
a command where the LLM first disagrees with it on a number, the LLM's continuation after it.

Real parts: both GGUFs of the pair through llama.cpp, the SLM's tokenizer from its GGUF. The
answers are cut short (80 tokens) so that the test stays quick; the grader is the one part
chosen for the test: it calls the SLM's own answer wrong and whatever the LLM's continuation
makes of it right, so that both kinds of row are built from real models' output.
"""

from __future__ import annotations

import json

import pytest

from relayllm.protos import registry
from relayllm.training.relay import own_path
from relayllm.training.relay.checkpoints import add_command_tokens, command_ids
from relayllm.training.relay.warmup import _numeric, clean_context_rows, line_span


def test_first_numeric_divergence_skips_wording_and_agreement():
    numeric = {7, 8}.__contains__  # tokens 7 and 8 hold digits
    assert own_path.first_numeric_divergence([1, 2, 7, 3], [1, 2, 7, 3], numeric) is None  # agreement
    assert own_path.first_numeric_divergence([1, 2, 7, 3], [1, 5, 7, 4], numeric) is None  # wording only
    assert own_path.first_numeric_divergence([1, 2, 7, 3], [1, 5, 8, 3], numeric) == 2
    assert own_path.first_numeric_divergence([1, 2, 3], [1, 8, 3], numeric) == 1  # the LLM's token is the digit


ASK = "<|im_start|>user\n{} Answer with the computation only.<|im_end|>\n<|im_start|>assistant\n"
PENS = (ASK.format("A shop sells pens at 3 dollars each. Tom buys 17 pens and pays with a 100 dollar bill. "
                   "How much change does he get?"), "49")


def _slm_answers(slm, tok, pairs, tmp_path):
    """The prompts' tokens and the SLM's greedy answers (80 tokens), cached where own_examples reads them."""
    from relayllm.training.relay.llm_paths import gguf_solutions

    prompts = [tok.encode(p, add_special_tokens=False) for p, _ in pairs]
    return prompts, gguf_solutions(slm, prompts, 80, cache_file=tmp_path / own_path.SLM_ANSWERS_FILE,
                                   progress=False, stop_ids=(tok.eos_token_id,))


@pytest.fixture(scope="module")
def pair_and_tokenizer():
    from transformers import AutoTokenizer

    slm, llm = registry.pull(registry.DEFAULT_SLM, progress=False), registry.pull(registry.DEFAULT_LLM, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(slm.parent), gguf_file=slm.name)
    add_command_tokens(tokenizer)
    return slm, llm, tokenizer


def test_own_rows_call_where_the_slm_goes_wrong_and_resume_from_the_cache(pair_and_tokenizer, tmp_path):
    slm, llm, tok = pair_and_tokenizer
    pairs = [PENS,
             (ASK.format("A train travels 84 km in 1.5 hours, then 126 km in 2.25 hours. What is its average "
                         "speed in km per hour over the whole trip?"), "56")]
    seen: dict[str, str] = {}

    def grader(text, answer):  # the SLM's own answers are wrong; what the LLM makes of them is right
        own = text in seen.values()
        return not own

    prompts, answers = _slm_answers(slm, tok, pairs, tmp_path)
    for (p, _), a in zip(pairs, answers):
        seen[p] = tok.decode(a, skip_special_tokens=True)
    examples = own_path.own_examples(slm, llm, tok, pairs, tmp_path, grader=grader, n_call=32, max_new_tokens=80,
                                     progress=False)
    reads = [json.loads(line) for line in (tmp_path / own_path.READS_FILE).read_text().splitlines()]
    assert [r["question"] for r in reads] == [0, 1]  # both answers were wrong: the LLM read both
    open_id, close_id = tok.convert_tokens_to_ids(["<call>", "</call>"])
    for ex, read, answer, prompt in zip(examples, reads, answers, prompts):
        t, cont = read["t"], read["ids"]
        assert t is not None and cont and cont[0] != answer[t]  # the LLM writes something else there
        assert _numeric(tok, answer[t]) or _numeric(tok, cont[0])  # on a number or a sign
        n = line_span(cont, tok, 0, 32)
        assert ex.prompt_ids == prompt and ex.calls == 1
        assert ex.completion_ids == answer[:t] + command_ids(tok, n) + cont  # the SLM's own words up to there
        cmd = len(command_ids(tok, n))
        assert ex.llm_mask == [0] * (t + cmd) + [1] * n + [0] * (len(cont) - n)  # the LLM's N out of the loss
        assert t + len(cont) <= 80
        clean, command_row = clean_context_rows(ex, open_id, close_id)  # the drop-mode rows
        assert clean.completion_ids == answer[:t] + cont and command_row.context == t
    # resumed: nothing is read again, the same rows come back
    again = own_path.own_examples(slm, llm, tok, pairs, tmp_path, grader=grader, n_call=32, max_new_tokens=80,
                                  progress=False)
    assert len((tmp_path / own_path.READS_FILE).read_text().splitlines()) == 2
    assert [e.completion_ids for e in again] == [e.completion_ids for e in examples]
    # an answer the grader calls right is a row of its own words, with no command
    right = own_path.own_examples(slm, llm, tok, pairs, tmp_path, grader=lambda text, answer: True, n_call=32,
                                  max_new_tokens=80, progress=False)
    assert [(e.completion_ids, e.calls, sum(e.llm_mask)) for e in right] == [(a, 0, 0) for a in answers]


def test_hand_off_calls_again_where_the_slms_text_still_goes_wrong():
    """The loop of after_call="slm" with scripted models: a second numeric divergence in the
    SLM's continuation is what real models give only now and then, so it is scripted here."""
    written = {(1, 2, 30, 31): [3, 4, 5, 6], (1, 2, 30, 31, 3, 4, 40, 41): [7, 8]}  # head -> the SLM's words

    def run(right, max_calls, diverge=6):
        return own_path.hand_off([1, 2, 9, 9, 9], 2, [30, 31, 32], line=lambda cont: 2,
                                 slm_writes=lambda head: written[tuple(head)],
                                 llm_diverges=lambda text, after: diverge,
                                 llm_writes=lambda head: [40, 41], right=right, max_calls=max_calls, ends={99})

    # right after the first call: one call, the SLM's own words after the LLM's two
    assert run(lambda text: True, 3) == ([[2, 2]], [1, 2, 30, 31, 3, 4, 5, 6], True)
    # still wrong: the LLM reads the text, the next call goes at its divergence (position 6), then right
    assert run(lambda text: 8 in text, 3) == ([[2, 2], [6, 2]], [1, 2, 30, 31, 3, 4, 40, 41, 7, 8], True)
    # the cap holds: one call allowed, the text stays wrong
    assert run(lambda text: 8 in text, 1) == ([[2, 2]], [1, 2, 30, 31, 3, 4, 5, 6], False)
    # no further divergence: nothing more to call on
    assert run(lambda text: False, 3, diverge=None) == ([[2, 2]], [1, 2, 30, 31, 3, 4, 5, 6], False)
    # no divergence at all: no call, the answer as it was
    assert own_path.hand_off([1, 2], None, [], line=len, slm_writes=None, llm_diverges=None, llm_writes=None,
                             right=None, max_calls=3, ends=set()) == ([], [1, 2], False)


def test_after_call_slm_keeps_the_slms_own_words_after_the_llms_line(pair_and_tokenizer, tmp_path):
    """after_call="slm" on the real pair: the LLM writes its line at the divergence, the SLM
    writes on; only a text graded right becomes a row, and a cached row with another call cap
    is built again."""
    from relayllm.training.errors import TrainingError
    from relayllm.training.relay.llm_paths import gguf_solutions

    slm, llm, tok = pair_and_tokenizer
    pairs = [PENS,
             (ASK.format("A farmer has 23 cows and buys 3 times as many sheep, then sells 17 sheep. How many "
                         "animals does he have?"), "75")]
    prompts, answers = _slm_answers(slm, tok, pairs, tmp_path)
    own = {tok.decode(a, skip_special_tokens=True) for a in answers}

    def handed_off_is_right(text, answer):  # the SLM's own answers are wrong, a handed-off text right
        return text not in own

    with pytest.raises(TrainingError, match="no warm-up example"):  # no call allowed: nothing to keep
        own_path.own_examples(slm, llm, tok, pairs, tmp_path, grader=handed_off_is_right, n_call=32,
                              max_new_tokens=80, after_call="slm", max_calls=0, progress=False)
    examples = own_path.own_examples(slm, llm, tok, pairs, tmp_path, grader=handed_off_is_right, n_call=32,
                                     max_new_tokens=80, after_call="slm", max_calls=2, progress=False)
    rows = {r["question"]: r for r in map(json.loads, (tmp_path / own_path.HANDOFFS_FILE).read_text().splitlines())
            if r["max_calls"] == 2}
    reads = {r["question"]: r for r in map(json.loads, (tmp_path / own_path.READS_FILE).read_text().splitlines())}
    assert sorted(rows) == [0, 1]  # the max_calls 0 rows were built again
    kept = [q for q in (0, 1) if rows[q]["right"]]
    assert kept and len(examples) == len(kept)
    assert all(rows[q]["calls"] == [] for q in (0, 1) if q not in kept)  # no call, not right: no row
    for ex, q in zip(examples, kept):
        (t, n), = rows[q]["calls"]  # right after the first call
        text = rows[q]["text"]
        assert t == reads[q]["t"] and text[:t] == answers[q][:t] and text[t:t + n] == reads[q]["ids"][:n]
        assert n == line_span(reads[q]["ids"], tok, 0, 32) and len(text) <= 80
        # what follows the LLM's line is the SLM's own greedy continuation (llama.cpp, run apart)
        mine = gguf_solutions(slm, [prompts[q] + text[:t + n]], 4, progress=False, stop_ids=(tok.eos_token_id,))[0]
        assert text[t + n:t + n + 4] == mine
        assert ex.calls == 1 and ex.completion_ids == text[:t] + command_ids(tok, n) + text[t:]
        assert [c for c, m in zip(ex.completion_ids, ex.llm_mask) if m] == text[t:t + n]  # the LLM's line only

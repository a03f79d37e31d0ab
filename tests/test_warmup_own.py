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


@pytest.fixture(scope="module")
def pair_and_tokenizer():
    from transformers import AutoTokenizer

    slm, llm = registry.pull(registry.DEFAULT_SLM, progress=False), registry.pull(registry.DEFAULT_LLM, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(slm.parent), gguf_file=slm.name)
    add_command_tokens(tokenizer)
    return slm, llm, tokenizer


def test_own_rows_call_where_the_slm_goes_wrong_and_resume_from_the_cache(pair_and_tokenizer, tmp_path):
    slm, llm, tok = pair_and_tokenizer
    ask = "<|im_start|>user\n{} Answer with the computation only.<|im_end|>\n<|im_start|>assistant\n"
    pairs = [(ask.format("A shop sells pens at 3 dollars each. Tom buys 17 pens and pays with a 100 dollar bill. "
                         "How much change does he get?"), "49"),
             (ask.format("A train travels 84 km in 1.5 hours, then 126 km in 2.25 hours. What is its average "
                         "speed in km per hour over the whole trip?"), "56")]
    seen: dict[str, str] = {}

    def grader(text, answer):  # the SLM's own answers are wrong; what the LLM makes of them is right
        own = text in seen.values()
        return not own

    from relayllm.training.relay.llm_paths import gguf_solutions

    prompts = [tok.encode(p, add_special_tokens=False) for p, _ in pairs]
    answers = gguf_solutions(slm, prompts, 80, cache_file=tmp_path / own_path.SLM_ANSWERS_FILE, progress=False,
                             stop_ids=(tok.eos_token_id,))
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

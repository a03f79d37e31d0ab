"""Warm-up strategy "own": a command where the SLM's OWN answer goes wrong.

Why: the guided rows (training/relay/warmup.py) follow the LLM's solving path and put a
command where the SLM, teacher-forced on that path, would depart from it. On the real pair
that taught calls the SLM makes where its own answer has already left the LLM's path lines
earlier (the line N rule: 23 of 50 answers called, 1 wrong answer fixed; README, "Relay
training on the pair"). Here the rows are the SLM's own words, so the call is taught in the
text the SLM really writes, at the point where that text starts to go wrong:

1. the SLM answers every training question greedily (llama.cpp, its GGUF);
2. an answer that reaches the right result is a row as it is, without a command: where the
   SLM can do without, it learns not to call;
3. a wrong answer is read by the LLM (teacher-forced, llama.cpp's logits for every
   position): the first position where the LLM's greedy token differs from the SLM's on a
   number or an arithmetic sign (warmup.py's call_at "numbers") is where the SLM calls. The
   LLM then writes on greedily from the SLM's text up to there. Where that reaches the right
   result, the row is: the SLM's text up to there, `<call>N</call>`, the LLM's next N tokens
   (the rest of its line, at most n_call: warmup.line_span; written by the LLM, so out of the
   loss), then the rest of the LLM's continuation (in the loss, as after a guided command).
   Where it does not, the question gives no row.
4. strategy "own-handoff" (`after_call="slm"`): the LLM writes only its N tokens and the SLM
   writes on from there (greedy, its GGUF, commands kept out of its context as the edge's
   command_context="drop" does). Where that goes wrong too, the LLM reads the new text and the SLM calls again at its
   next numeric divergence, up to `max_calls` commands. The row is kept only where the SLM's
   text reaches the right result, so everything in the loss is the SLM's own words and its
   commands: the calls are taught without teaching the SLM the LLM's wording. Measured on 128
   questions (README, "Relay training on the pair"): the SLM alone fell from 32% to 24% with
   "own" and to 22% with "own-handoff", so the wording was not what cost its own accuracy.

Each stage is appended to a JSONL cache in the run's folder, one line per question, so an
interrupted build goes on where it stopped; progress bars show the ETA.
"""

from __future__ import annotations

from pathlib import Path

from relayllm.training.errors import TrainingError

SLM_ANSWERS_FILE = "slm_answers.jsonl"  # step 1, written by llm_paths.gguf_solutions
READS_FILE = "own_reads.jsonl"  # step 3: the divergence and the LLM's continuation per question
HANDOFFS_FILE = "own_handoffs.jsonl"  # step 4: the calls and the SLM's final text per question


def first_numeric_divergence(answer: list[int], llm_greedy: list[int], numeric) -> int | None:
    """The first position where the LLM's greedy token differs from the SLM's and either holds
    a digit or an arithmetic sign (`numeric(token_id)`), else None."""
    for t, (mine, theirs) in enumerate(zip(answer, llm_greedy)):
        if mine != theirs and (numeric(mine) or numeric(theirs)):
            return t
    return None


def _llm_divergence(llm, prompt: list[int], text: list[int], after: int, numeric) -> int | None:
    """The LLM (a llama_cpp.Llama with logits_all) reads `text` teacher-forced after `prompt`:
    the first position from `after` on where its greedy token and the text's differ on a
    number or a sign, else None."""
    import numpy as np

    llm.reset()
    llm.eval(prompt + text)
    rows = np.asarray(llm.scores[len(prompt) - 1: len(prompt) - 1 + len(text)])
    d = first_numeric_divergence(text[after:], rows.argmax(-1).tolist()[after:], numeric)
    return None if d is None else after + d


def _llm_reads(llm_gguf, prompts, answers, todo, *, max_new_tokens: int, stop_ids, numeric, cache,
               progress: bool) -> None:
    """Step 3 for the questions `todo`: a row {"question", "prompt", "t": divergence or None,
    "ids": the LLM's continuation from there} per question, added to `cache` (a JsonlCache)."""
    from tqdm.auto import tqdm

    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.edge.models import quiet_llama
    from relayllm.training.relay.llm_paths import greedy_ids

    if not todo:
        return
    llm = quiet_llama(model_path=str(llm_gguf), n_ctx=2048, n_threads=physical_cores(), logits_all=True)
    ends = {int(llm.token_eos()), *map(int, stop_ids)}
    try:
        for i in tqdm(todo, desc="LLM reads the SLM's wrong answers (llama.cpp)", disable=not progress,
                      mininterval=1.0):
            prompt, answer = prompts[i], answers[i]
            t = _llm_divergence(llm, prompt, answer, 0, numeric)
            ids = [] if t is None else greedy_ids(llm, prompt + answer[:t], ends, max_new_tokens - t)
            cache.add({"question": i, "prompt": prompt, "t": t, "ids": ids})
    finally:
        llm.close()


def hand_off(answer: list[int], t: int | None, cont: list[int], *, line, slm_writes, llm_diverges, llm_writes, right,
             max_calls: int, ends) -> tuple[list[list[int]], list[int], bool]:
    """Step 4 for one wrong answer: the SLM's `answer`, its first numeric divergence `t` and the
    LLM's continuation `cont` from there. Each call: the LLM's line (`line(cont)` tokens), then
    `slm_writes(head)` goes on; a text still not `right` is read by `llm_diverges(text, after)`
    (the next divergence from `after` on, or None) and `llm_writes(head)` gives the next call's
    continuation. Returns the calls [[t, n], ...], the clean text and whether it is right."""
    text, calls, ok = list(answer), [], False
    while t is not None and len(calls) < max_calls:
        n = line(cont)
        head = text[:t] + cont[:n]
        calls.append([t, n])
        text = head + ([] if head and head[-1] in ends else slm_writes(head))  # the LLM's line may end it
        ok = right(text)
        if ok or len(calls) >= max_calls:
            break
        t = llm_diverges(text, t + n)
        cont = [] if t is None else llm_writes(text[:t])
    return calls, text, ok


def _handoffs(slm_gguf, llm_gguf, prompts, answers, reads, todo, *, right, n_call: int, max_calls: int,
              max_new_tokens: int, stop_ids, numeric, line, cache, progress: bool) -> None:
    """Step 4 for the questions `todo` (module docstring): a row {"question", "prompt", "calls":
    [[t, n], ...] (positions in the clean text), "text": the clean text, "right", "max_calls"} per question,
    added to `cache`. Both models stay loaded; they run one after the other, never at once."""
    from tqdm.auto import tqdm

    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.edge.models import quiet_llama
    from relayllm.training.relay.llm_paths import greedy_ids

    if not todo:
        return
    slm = quiet_llama(model_path=str(slm_gguf), n_ctx=2048, n_threads=physical_cores())
    llm = quiet_llama(model_path=str(llm_gguf), n_ctx=2048, n_threads=physical_cores(), logits_all=True)
    ends = {int(llm.token_eos()), int(slm.token_eos()), *map(int, stop_ids)}

    try:
        for i in tqdm(todo, desc="SLM writes on after the LLM's line (llama.cpp)", disable=not progress,
                      mininterval=1.0):
            calls, text, ok = hand_off(answers[i], reads[i]["t"], reads[i]["ids"], line=lambda c: line(c, n_call),
                                       slm_writes=lambda head: greedy_ids(slm, prompts[i] + head, ends,
                                                                          max_new_tokens - len(head)),
                                       llm_diverges=lambda text, after: _llm_divergence(llm, prompts[i], text, after,
                                                                                        numeric),
                                       llm_writes=lambda head: greedy_ids(llm, prompts[i] + head, ends, n_call),
                                       right=lambda text: right(i, text), max_calls=max_calls, ends=ends)
            cache.add({"question": i, "prompt": prompts[i], "max_calls": max_calls, "calls": calls, "text": text,
                       "right": ok})
    finally:
        slm.close()
        llm.close()


def own_examples(slm_gguf, llm_gguf, tokenizer, pairs: list[tuple[str, str]], out_dir: Path, *, grader, n_call: int,
                 max_new_tokens: int, after_call: str = "llm", max_calls: int = 3, progress: bool = True) -> list:
    """The strategy's WarmupExamples (module docstring) for (prompt text, answer) pairs;
    `after_call`: who writes on after the LLM's N tokens ("llm" or "slm", step 4)."""
    from relayllm.training.jsonl_cache import JsonlCache
    from relayllm.training.relay.llm_paths import gguf_solutions
    from relayllm.training.relay.warmup import WarmupExample, _numeric, line_span

    if grader is None:
        from relayllm.training.data import task

        grader = task.grade
    for name, path in (("SLM", slm_gguf), ("LLM", llm_gguf)):
        if not (Path(str(path)).is_file() and str(path).endswith(".gguf")):
            raise TrainingError(f"warm-up strategy 'own' reads the {name}'s GGUF file, got {path}")
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    stop = (tokenizer.eos_token_id,)
    answers = gguf_solutions(slm_gguf, prompts, max_new_tokens, cache_file=out_dir / SLM_ANSWERS_FILE,
                             progress=progress, stop_ids=stop, desc="SLM answers (llama.cpp, greedy)")
    right = [grader(tokenizer.decode(a, skip_special_tokens=True), ans) for a, (_, ans) in zip(answers, pairs)]
    with JsonlCache(out_dir / READS_FILE, key="question") as reads:
        todo = [i for i, ok in enumerate(right)  # a cached read of another question is done again
                if not ok and not (i in reads and reads[i]["prompt"] == prompts[i])]
        _llm_reads(llm_gguf, prompts, answers, todo, max_new_tokens=max_new_tokens, stop_ids=stop,
                   numeric=lambda token: _numeric(tokenizer, token), cache=reads, progress=progress)
    if after_call == "slm":
        with JsonlCache(out_dir / HANDOFFS_FILE, key="question") as handoffs:
            todo = [i for i, ok in enumerate(right)  # a cached row of another question or call cap is redone
                    if not ok and not (i in handoffs and handoffs[i]["prompt"] == prompts[i]
                                       and handoffs[i]["max_calls"] == max_calls)]
            _handoffs(slm_gguf, llm_gguf, prompts, answers, reads, todo, n_call=n_call, max_calls=max_calls,
                      right=lambda i, text: grader(tokenizer.decode(text, skip_special_tokens=True), pairs[i][1]),
                      max_new_tokens=max_new_tokens, stop_ids=stop, numeric=lambda token: _numeric(tokenizer, token),
                      line=lambda cont, n_max: line_span(cont, tokenizer, 0, n_max), cache=handoffs,
                      progress=progress)
    examples = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if right[i]:
            examples.append(WarmupExample(prompt, list(answer), [0] * len(answer), 0))
            continue
        if after_call == "slm":
            if handoffs[i]["right"]:
                examples.append(_with_commands(handoffs[i]["text"], handoffs[i]["calls"], prompt, tokenizer))
            continue
        t, cont = reads[i]["t"], reads[i]["ids"]
        if t is None or not grader(tokenizer.decode(answer[:t] + cont, skip_special_tokens=True), pairs[i][1]):
            continue  # no place to call, or the LLM does not bring this answer to the right result
        examples.append(_with_commands(answer[:t] + cont, [[t, line_span(cont, tokenizer, 0, n_call)]], prompt,
                                       tokenizer))
    if not examples:
        raise TrainingError("no warm-up example: the SLM solved none of the prompts and the LLM rescued none")
    return examples


def _with_commands(text: list[int], calls: list, prompt: list[int], tokenizer):
    """The clean `text` with `<call>N</call>` before each call's N LLM tokens (out of the loss)."""
    from relayllm.training.relay.checkpoints import command_ids
    from relayllm.training.relay.warmup import WarmupExample

    completion, mask, at = [], [], 0
    for t, n in calls:
        cmd = command_ids(tokenizer, n)
        completion += text[at:t] + cmd + text[t:t + n]
        mask += [0] * (t - at + len(cmd)) + [1] * len(text[t:t + n])
        at = t + n
    completion += text[at:]
    mask += [0] * len(text[at:])
    return WarmupExample(prompt, completion, mask, len(calls))

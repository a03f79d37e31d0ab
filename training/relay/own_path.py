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

Each stage is appended to a JSONL cache in the run's folder, one line per question, so an
interrupted build goes on where it stopped; progress bars show the ETA.
"""

from __future__ import annotations

from pathlib import Path

from relayllm.training.errors import TrainingError

SLM_ANSWERS_FILE = "slm_answers.jsonl"  # step 1, written by llm_paths.gguf_solutions
READS_FILE = "own_reads.jsonl"  # step 3: the divergence and the LLM's continuation per question


def first_numeric_divergence(answer: list[int], llm_greedy: list[int], numeric) -> int | None:
    """The first position where the LLM's greedy token differs from the SLM's and either holds
    a digit or an arithmetic sign (`numeric(token_id)`), else None."""
    for t, (mine, theirs) in enumerate(zip(answer, llm_greedy)):
        if mine != theirs and (numeric(mine) or numeric(theirs)):
            return t
    return None


def _llm_reads(llm_gguf, prompts, answers, todo, *, max_new_tokens: int, stop_ids, numeric, cache,
               progress: bool) -> None:
    """Step 3 for the questions `todo`: a row {"question", "prompt", "t": divergence or None,
    "ids": the LLM's continuation from there} per question, added to `cache` (a JsonlCache)."""
    import numpy as np
    from tqdm.auto import tqdm

    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.edge.models import quiet_llama

    if not todo:
        return
    llm = quiet_llama(model_path=str(llm_gguf), n_ctx=2048, n_threads=physical_cores(), logits_all=True)
    ends = {int(llm.token_eos()), *map(int, stop_ids)}
    try:
        for i in tqdm(todo, desc="LLM reads the SLM's wrong answers (llama.cpp)", disable=not progress,
                      mininterval=1.0):
            prompt, answer = prompts[i], answers[i]
            llm.reset()
            llm.eval(prompt + answer)
            rows = np.asarray(llm.scores[len(prompt) - 1: len(prompt) - 1 + len(answer)])
            t = first_numeric_divergence(answer, rows.argmax(-1).tolist(), numeric)
            ids: list[int] = []
            if t is not None:  # generate() reuses the evaluated prefix: only the new tokens cost
                for token in llm.generate(prompt + answer[:t], temp=0.0, top_k=1, reset=True):
                    ids.append(int(token))
                    if token in ends or t + len(ids) >= max_new_tokens:
                        break
            cache.add({"question": i, "prompt": prompt, "t": t, "ids": ids})
    finally:
        llm.close()


def own_examples(slm_gguf, llm_gguf, tokenizer, pairs: list[tuple[str, str]], out_dir: Path, *, grader, n_call: int,
                 max_new_tokens: int, progress: bool = True) -> list:
    """The strategy's WarmupExamples (module docstring) for (prompt text, answer) pairs."""
    from relayllm.training.jsonl_cache import JsonlCache
    from relayllm.training.relay.checkpoints import command_ids
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
    examples = []
    for i, (prompt, answer) in enumerate(zip(prompts, answers)):
        if right[i]:
            examples.append(WarmupExample(prompt, list(answer), [0] * len(answer), 0))
            continue
        t, cont = reads[i]["t"], reads[i]["ids"]
        if t is None or not grader(tokenizer.decode(answer[:t] + cont, skip_special_tokens=True), pairs[i][1]):
            continue  # no place to call, or the LLM does not bring this answer to the right result
        n = line_span(cont, tokenizer, 0, n_call)
        cmd = command_ids(tokenizer, n)
        completion = answer[:t] + cmd + cont
        mask = [0] * (t + len(cmd)) + [1] * n + [0] * (len(cont) - n)
        examples.append(WarmupExample(prompt, completion, mask, 1))
    if not examples:
        raise TrainingError("no warm-up example: the SLM solved none of the prompts and the LLM rescued none")
    return examples


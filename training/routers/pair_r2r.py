"""R2R labels for the real pair: does the 0.5B's departure from the 1.5B's right answer change the outcome?

CITER's shortcut (training/routers/pair.py) labels every position where the 0.5B's greedy
token departs from the 1.5B's right answer as the LLM's. Most such departures are wording
("To find" / "To determine") and change nothing. R2R (Roads to Rome) keeps only the ones that
matter: at each departure the LLM writes on greedily from the SLM's token, and the position
is *divergent* (label 1) when that branch ends in a wrong answer, *neutral* (label 0) when it
still ends right. The LLM's own branch is the reference itself, right by construction, so it
costs nothing. The paper asks a verifier LLM whether the two branches differ in meaning;
here the final answer's grade (math-verify) is the verifier, as in training/routers/r2r.py
for the project's own models.

The branches are written by llama.cpp from the 1.5B's GGUF, in order of position within a
question, so each one re-reads only the few tokens after the previous branch's point
(llama-cpp-python keeps the longest common prefix of its KV cache). Each branch is appended
to a JSONL cache as it is graded: a cut build resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def branch_key(prompt_ids: Sequence[int], position: int, token: int, max_new_tokens: int) -> str:
    return hashlib.sha256(json.dumps([list(prompt_ids), position, token, max_new_tokens]).encode()).hexdigest()[:16]


def r2r_labels(llm_gguf: str | Path, prompts: list[list[int]], references: list[list[int]],
               slm_greedy: list[list[int]], is_right: Callable[[int, list[int]], bool], *, max_new_tokens: int,
               cache_file: str | Path | None = None, stop_ids: tuple[int, ...] = (), n_ctx: int = 2048,
               progress: bool = True) -> tuple[list[np.ndarray], dict]:
    """Per question, a 0/1 label per reference position (1: divergent), and counts.

    `references[q]`: the LLM's right answer (token ids) to `prompts[q]`; `slm_greedy[q][i]`: the
    SLM's greedy token where the reference has token i; `is_right(q, answer_ids)` grades an
    answer to question q. A branch answer is the reference up to i, the SLM's token, then the
    LLM's greedy continuation to its end or `max_new_tokens` answer tokens in all."""
    from tqdm.auto import tqdm

    from relayllm.training.jsonl_cache import JsonlCache

    # every departure, as (question, position, key), in position order within a question: the
    # branches are written in that order (prefix reuse) and the labels read back by the same keys
    departures = [(q, i, branch_key(prompt, i, int(a), max_new_tokens))
                  for q, (prompt, ref, mine) in enumerate(zip(prompts, references, slm_greedy))
                  for i, (a, b) in enumerate(zip(mine, ref)) if a != b]
    tokens_written = 0
    with JsonlCache(cache_file) as cache:  # one line per branch: a cut build keeps what it graded
        todo = [d for d in departures if d[2] not in cache]
        if todo:
            from relayllm.cloud.backends.llamacpp import physical_cores
            from relayllm.edge.models import quiet_llama

            llm = quiet_llama(model_path=str(llm_gguf), n_ctx=n_ctx, n_threads=physical_cores())
            ends = {int(llm.token_eos()), *map(int, stop_ids)}
            try:
                for q, i, key in tqdm(todo, desc="R2R branches (the LLM writes on from each departure)",
                                      disable=not progress, mininterval=1.0):
                    answer = list(references[q][:i]) + [int(slm_greedy[q][i])]
                    if answer[-1] not in ends:
                        # reset=True with a shared prefix: llama-cpp-python re-reads only what changed
                        for token in llm.generate(prompts[q] + answer, temp=0.0, top_k=1, reset=True):
                            if len(answer) >= max_new_tokens:
                                break
                            answer.append(int(token))
                            tokens_written += 1
                            if token in ends:
                                break
                    cache.add({"key": key, "right": bool(is_right(q, answer)), "tokens": len(answer)})
            finally:
                llm.close()
    labels = [np.zeros(len(ref), dtype=np.float32) for ref in references]
    for q, i, key in departures:
        labels[q][i] = float(not cache[key]["right"])
    divergent = int(sum(row.sum() for row in labels))
    return labels, {"departures": len(departures), "divergent": divergent, "branches_written": len(todo),
                    "branch_tokens_written": tokens_written}

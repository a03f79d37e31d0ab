"""The LLM's solving paths for the guided warm-up, written by llama.cpp from the LLM's GGUF.

The guided warm-up (training/relay/warmup.py) needs the LLM's greedy solution of every
training question: the SLM is taught to call where it departs from that path. For the
project's tiny models torch writes them; for a real LLM (the 1.5B of the real pair) torch on
2 CPU cores would dequantize it into 6 GB of float32 and write a few tokens per second,
while llama.cpp runs its own Q4_K_M file at ~20 tokens/s. The two share the tokenizer, so
the paths are token ids the SLM's tokenizer reads as they are.

Paths are appended to a JSONL cache, one line per question (keyed by the prompt's ids), so
an interrupted build goes on where it stopped; a progress bar shows the ETA.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def _key(prompt_ids: list[int], max_new_tokens: int) -> str:
    return hashlib.sha256(json.dumps([prompt_ids, max_new_tokens]).encode()).hexdigest()[:16]


def greedy_ids(model, tokens: list[int], ends: set[int], limit: int) -> list[int]:
    """`model`'s (a llama_cpp.Llama) greedy continuation of `tokens`, at most `limit` tokens, the
    end token kept; llama.cpp reuses the prefix it evaluated last, so only new tokens cost."""
    ids: list[int] = []
    if limit <= 0:
        return ids
    for token in model.generate(tokens, temp=0.0, top_k=1, reset=True):
        ids.append(int(token))
        if token in ends or len(ids) >= limit:
            break
    return ids


def gguf_solutions(llm_gguf: str | Path, prompts: list[list[int]], max_new_tokens: int, *,
                   cache_file: str | Path | None = None, n_ctx: int = 2048, progress: bool = True,
                   stop_ids: tuple[int, ...] = (), desc: str = "LLM paths (llama.cpp, greedy)") -> list[list[int]]:
    """The LLM's greedy completion (token ids, the end token kept when it ended) of each
    prompt. It ends at llama.cpp's EOS or any of `stop_ids` (the SLM tokenizer's EOS).
    `desc`: the progress bar's label (the SLM's answers are written the same way)."""
    from tqdm.auto import tqdm

    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.edge.models import quiet_llama
    from relayllm.training.jsonl_cache import JsonlCache

    keys = [_key(p, max_new_tokens) for p in prompts]
    with JsonlCache(cache_file) as cache:  # one line per question: a cut build keeps what it wrote
        todo = [i for i, k in enumerate(keys) if k not in cache]
        if todo:
            # every physical core: nothing else runs while the paths are written (llama-cpp-python's
            # own default is half the logical CPUs, one thread on a 2-core machine)
            llm = quiet_llama(model_path=str(llm_gguf), n_ctx=n_ctx, n_threads=physical_cores())
            ends = {int(llm.token_eos()), *map(int, stop_ids)}
            try:
                for i in tqdm(todo, desc=desc, disable=not progress, mininterval=1.0):
                    llm.reset()
                    cache.add({"key": keys[i], "ids": greedy_ids(llm, prompts[i], ends, max_new_tokens)})
            finally:
                llm.close()
    return [cache[k]["ids"] for k in keys]

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
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _key(prompt_ids: list[int], max_new_tokens: int) -> str:
    return hashlib.sha256(json.dumps([prompt_ids, max_new_tokens]).encode()).hexdigest()[:16]


def gguf_solutions(llm_gguf: str | Path, prompts: list[list[int]], max_new_tokens: int, *,
                   cache_file: str | Path | None = None, n_ctx: int = 2048, progress: bool = True,
                   stop_ids: tuple[int, ...] = (), parallel: int = 1) -> list[list[int]]:
    """The LLM's greedy completion (token ids, the end token kept when it ended) of each
    prompt. It ends at llama.cpp's EOS or any of `stop_ids` (the SLM tokenizer's EOS).

    `parallel` > 1 writes that many paths at once through the cloud's batch engine
    (cloud/backends/llamacpp_batched.py: one forward pass per step for every path, a unified
    KV cache): on 2 cores the 1.5B decodes 16 sequences at ~1.6x the tokens/s of one. Greedy
    paths are the same token for token (the engine's tested invariant)."""
    from tqdm.auto import tqdm

    cache: dict[str, list[int]] = {}
    cache_path = Path(cache_file) if cache_file is not None else None
    if cache_path is not None and cache_path.is_file():
        for line in cache_path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                cache[row["key"]] = row["ids"]
    keys = [_key(p, max_new_tokens) for p in prompts]
    todo = [i for i, k in enumerate(keys) if k not in cache]
    if not todo:
        return [cache[k] for k in keys]
    lock = threading.Lock()
    out = cache_path.open("a") if cache_path is not None else None

    def record(i: int, ids: list[int]) -> None:
        with lock:
            cache[keys[i]] = ids
            if out is not None:  # one line per question: a cut build keeps what it wrote
                out.write(json.dumps({"key": keys[i], "ids": ids}) + "\n")
                out.flush()

    bar = tqdm(total=len(todo), desc=f"LLM paths (llama.cpp, greedy, {parallel} at once)", disable=not progress,
               mininterval=1.0)
    try:
        write = _one_at_a_time if parallel <= 1 else _batched
        write(llm_gguf, prompts, todo, max_new_tokens, n_ctx, stop_ids, parallel,
              lambda i, ids: (record(i, ids), bar.update(1)))
    finally:
        bar.close()
        if out is not None:
            out.close()
    return [cache[k] for k in keys]


def _one_at_a_time(llm_gguf, prompts, todo, max_new_tokens, n_ctx, stop_ids, parallel, record) -> None:
    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.edge.models import quiet_llama

    # every physical core: nothing else runs while the paths are written (llama-cpp-python's
    # own default is half the logical CPUs, one thread on a 2-core machine)
    llm = quiet_llama(model_path=str(llm_gguf), n_ctx=n_ctx, n_threads=physical_cores())
    ends = {int(llm.token_eos()), *map(int, stop_ids)}
    try:
        for i in todo:
            ids: list[int] = []
            llm.reset()
            for token in llm.generate(prompts[i], temp=0.0, top_k=1, reset=True):
                ids.append(int(token))
                if token in ends or len(ids) >= max_new_tokens:
                    break
            record(i, ids)
    finally:
        llm.close()


def _batched(llm_gguf, prompts, todo, max_new_tokens, n_ctx, stop_ids, parallel, record) -> None:
    from relayllm.cloud.backends.base import FINISH_EOS, SamplingParams
    from relayllm.cloud.backends.llamacpp import LlamaModelFile, physical_cores
    from relayllm.cloud.backends.llamacpp_batched import BatchEngine, _Generation

    file = LlamaModelFile(llm_gguf)
    ends = {int(t) for t in stop_ids}
    engine = BatchEngine(file, n_seq=parallel, n_ctx_per_seq=n_ctx, n_batch=min(512, n_ctx),
                         n_threads=physical_cores())
    free: queue.Queue[int] = queue.Queue()
    for seq in range(parallel):
        free.put(seq)

    def solve(i: int) -> None:
        seq, end = free.get(), []

        def is_end(token: int) -> bool:  # the engine leaves the end token out: keep it, as above
            if file.is_eos(token) or token in ends:
                end.append(int(token))
                return True
            return False

        try:  # keep=0: the sequence's cells from its last path go first
            job = _Generation(seq, prompts[i], 0, 0, file.sampler(SamplingParams(temperature=0.0), file.n_vocab),
                              max_new_tokens=max_new_tokens, should_stop=lambda: None, emit=lambda token: None,
                              is_eos=is_end)
            engine.run(job)
        finally:
            free.put(seq)
        record(i, [int(t) for t in job.generated] + (end[-1:] if job.finish == FINISH_EOS else []))

    try:
        with ThreadPoolExecutor(parallel) as pool:
            list(pool.map(solve, todo))
    finally:
        engine.close()
        file.close()

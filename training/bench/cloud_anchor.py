"""The physical anchor of the cloud benchmark: llama.cpp's own batched decode of a GGUF on this
machine, through llama-cpp-python's low-level API, with no service around it.

    python -m relayllm.training.bench.cloud_anchor MODEL.gguf [--levels 1 4 16 64] [--threads 2]

For each level n: one context with n sequences, each its own KV stream (kv_unified=True: one
stream for all, whose attention reads every sequence's cells and is slower at 16 and 64), every sequence
prefilled with the same prompt (what a benchmark session's first call sends,
cloud_scale.SWEEP_PROMPT; timed apart, as prefill), then `decode_tokens` steps of one llama_decode each holding one token per
sequence, each sequence sampled greedily with its own llama.cpp sampler chain (the work the
cloud does per token, minus the service). Aggregate decode tok/s = n x decode_tokens / the
decode steps' wall time. This is what `llama-batched-bench` measures (without -kvu), in the same
process as the cloud's own llama.cpp build. Not here: the cloud (training/bench/cloud_scale.py
runs both and divides).
"""

from __future__ import annotations

import argparse
import json
import time


def batched_decode(gguf, levels=(1, 4, 16, 64), *, prompt: str, decode_tokens: int = 32, n_threads: int | None = None,
                   kv_unified: bool = False, progress=lambda msg: None) -> list[dict]:
    """One row per level: prefill and decode tok/s of `levels[i]` sequences decoded together."""
    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.backends.llamacpp import LlamaModelFile, physical_cores

    file = LlamaModelFile(gguf)
    n_threads = n_threads or physical_cores()
    prompt_ids = file.tokenize(prompt.encode())
    rows = []
    try:
        for n in levels:
            progress(f"anchor: {file.path.name}, {n} sequences")
            rows.append(_level(file, n, prompt_ids, decode_tokens, n_threads, SamplingParams(), kv_unified))
    finally:
        file.close()
    return rows


def _level(file, n: int, prompt_ids: list[int], decode_tokens: int, n_threads: int, sampling, kv_unified: bool) -> dict:
    n_batch = 512
    per_seq = len(prompt_ids) + decode_tokens + 1
    ctx = file.context(n_ctx=max(n * per_seq, 256), n_batch=n_batch, n_threads=n_threads, n_seq_max=n,
                       kv_unified=kv_unified)
    batch = file.internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=True)
    b = batch.batch
    samplers = [file.sampler(sampling, file.n_vocab) for _ in range(n)]
    try:
        # 1) prefill: every sequence the same prompt, n_batch tokens per llama_decode
        rows = [(seq, pos, tok) for seq in range(n) for pos, tok in enumerate(prompt_ids)]
        first: dict[int, int] = {}  # sequence -> its first generated token
        start = time.perf_counter()
        for i in range(0, len(rows), n_batch):
            b.n_tokens = 0
            ends = []  # (sequence, batch row) of prompts ending in this batch
            for seq, pos, tok in rows[i:i + n_batch]:
                j = b.n_tokens
                b.token[j], b.pos[j], b.seq_id[j][0], b.n_seq_id[j] = tok, pos, seq, 1
                b.logits[j] = pos == len(prompt_ids) - 1
                if b.logits[j]:
                    ends.append((seq, j))
                b.n_tokens += 1
            ctx.decode(batch)
            for seq, j in ends:
                first[seq] = samplers[seq].sample(ctx, j)
        prefill_s = time.perf_counter() - start
        tokens = [first[seq] for seq in range(n)]
        # 2) decode: one token per sequence per llama_decode, each sampled from its own row
        start = time.perf_counter()
        for step in range(decode_tokens):
            b.n_tokens = 0
            for seq in range(n):
                b.token[seq], b.pos[seq], b.seq_id[seq][0], b.n_seq_id[seq] = tokens[seq], len(prompt_ids) + step, seq, 1
                b.logits[seq] = True
            b.n_tokens = n
            ctx.decode(batch)
            tokens = [samplers[seq].sample(ctx, seq) for seq in range(n)]
        decode_s = time.perf_counter() - start
    finally:
        ctx.close()
    return {"sequences": n, "kv": "unified" if kv_unified else "streams", "prompt_tokens": len(prompt_ids), "decode_tokens": decode_tokens, "threads": n_threads,
            "prefill_tok_s": n * len(prompt_ids) / prefill_s, "decode_tok_s": n * decode_tokens / decode_s,
            "step_s": decode_s / decode_tokens}


def main(argv=None) -> int:
    from relayllm.training.bench.cloud_scale import SWEEP_PROMPT

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--decode-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    rows = batched_decode(args.model, args.levels, prompt=SWEEP_PROMPT, decode_tokens=args.decode_tokens,
                          n_threads=args.threads, progress=lambda m: print(m, flush=True))
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def passes_per_step(gguf, *, prompt: str, sessions: int = 8, threads: int | None = None) -> dict:
    """Forward passes llama.cpp ran per engine step with `sessions` sessions decoding at once,
    counted by its graph eval callback (a probe beside the timed sweep: the callback is slow)."""
    from concurrent.futures import ThreadPoolExecutor

    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
    from relayllm.cloud.sessions import Session

    backend = BatchedLlamaCppBackend(str(gguf), n_ctx=512, max_sessions=sessions, n_threads=threads,
                                     count_passes=True)
    try:
        prompts = [backend.tokenize(f"{prompt} ({i})".encode()) for i in range(sessions)]

        def call(i):
            backend.generate(Session(key=("", f"probe{i}")), prompts[i], max_new_tokens=8, sampling=SamplingParams(),
                             should_stop=lambda: None, emit=lambda t: None)

        with ThreadPoolExecutor(sessions) as pool:
            list(pool.map(call, range(sessions)))
        steps = [r for r in backend.engine.history if not r.prefill_tokens]
        full = [r for r in steps if len(r.decode_seqs) == sessions]
        # runs of consecutive sequence ids in a step: with a KV stream per sequence llama.cpp
        # starts a pass at each gap, and a gap opens when a session ends before its neighbours
        # (the threads of this probe hand their calls in in any order)
        runs = sum(1 + sum(b != a + 1 for a, b in zip(seqs, seqs[1:])) for seqs in (sorted(r.decode_seqs) for r in steps))
        return {"sessions": sessions, "decode_steps": len(steps), "steps_with_every_session": len(full),
                "passes_per_decode_step": sum(r.passes for r in steps) / len(steps) if steps else float("nan"),
                "passes_per_id_run": sum(r.passes for r in steps) / runs if runs else float("nan"),
                "decode_tokens_per_step": sum(len(r.decode_seqs) for r in steps) / len(steps) if steps else 0.0}
    finally:
        backend.close()

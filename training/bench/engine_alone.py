"""The batched engine alone (no gRPC, no servicer) against llama.cpp's own batched decode loop,
both in this one process, on the same GGUF:

    python -m relayllm.training.bench.engine_alone MODEL.gguf [1,4,16] [--unified]

For each level n: the anchor (bench/cloud_anchor.py batched_decode, 64 decode steps), then n
sessions prefilled in the BatchedLlamaCppBackend and each generating 64 tokens at once from
threads. Ratio = the engine's generated tok/s / the anchor's decode tok/s. In-step = the
engine's llama_decode plus sampling per step; wall/step adds its Python between steps.
A probe of where the cloud's per-token time goes, beside training/bench/cloud_scale.py.
Both in one process is what makes it a probe, not the benchmark: after llama.cpp has computed
from the main thread (the anchor), the engine's own thread runs slower (bench/fresh_process.py).
"""

from __future__ import annotations

import sys, time
from concurrent.futures import ThreadPoolExecutor
from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
from relayllm.cloud.backends.base import SamplingParams
from relayllm.cloud.sessions import Session
from relayllm.training.bench.cloud_anchor import batched_decode
from relayllm.training.bench.cloud_scale import SWEEP_PROMPT


def main(argv) -> None:

    if len(argv) < 2:
        sys.exit(__doc__)
    gguf = argv[1]
    args = [a for a in argv[2:] if not a.startswith("--")]
    levels = [int(x) for x in args[0].split(",")] if args else [1, 4, 16]
    N = 64
    unified = "--unified" in argv  # both the anchor and the engine: one KV stream for all sequences
    anchor = batched_decode(gguf, levels, prompt=SWEEP_PROMPT, decode_tokens=N, kv_unified=unified)
    backend = BatchedLlamaCppBackend(gguf, n_ctx=512, max_sessions=max(levels), kv_unified=unified)
    try:
        for n, a in zip(levels, anchor):
            sessions = [Session(key=("", f"s{n}-{i}")) for i in range(n)]
            prompts = [backend.tokenize(SWEEP_PROMPT.encode()) for _ in range(n)]
            def first(i):
                backend.generate(sessions[i], prompts[i], max_new_tokens=1, sampling=SamplingParams(),
                                 should_stop=lambda: None, emit=lambda t: None)
            with ThreadPoolExecutor(n) as pool:
                list(pool.map(first, range(n)))
            outs = {}
            def more(i):
                toks = []
                backend.generate(sessions[i], sessions[i].kv_tokens, max_new_tokens=N, sampling=SamplingParams(),
                                 should_stop=lambda: None, emit=toks.append)
                return len(toks)
            e = backend.engine
            s0, t0 = e.steps, e.step_s
            start = time.perf_counter()
            with ThreadPoolExecutor(n) as pool:
                gen = sum(pool.map(more, range(n)))
            wall = time.perf_counter() - start
            steps, step_s = e.steps - s0, e.step_s - t0
            print(f"n={n}: anchor {a['decode_tok_s']:.1f} tok/s (step {a['step_s']*1e3:.2f} ms) | engine {gen/wall:.1f} tok/s "
                  f"ratio {gen/wall/a['decode_tok_s']:.2f}; {steps} steps, {gen/steps:.1f} tok/step, in-step {step_s/steps*1e3:.2f} ms, "
                  f"wall/step {wall/steps*1e3:.2f} ms", flush=True)
            for s in sessions:
                backend._release(s)
    finally:
        backend.close()


if __name__ == "__main__":
    main(sys.argv)

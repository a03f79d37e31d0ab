"""The real pair, measured side by side: Qwen2.5-Coder-0.5B (device) and 1.5B (cloud) on this machine.

    python -m relayllm.training.bench.pair [--rounds 3] [--tokens 64] [--out DIR]

For each model of the registry's pair, in one run:
- decode tokens/s through the edge SDK and through llama-cpp-python's own `create_completion`
  on the same GGUF, alternating rounds (training/bench/edge.py paired_decode), greedy, on the
  edge benchmark's long-story prompt (it never ends early, so every round writes all its
  tokens); ratio = SDK / llama.cpp, the median of the per-round ratios;
- prefill tokens/s and time to first token of a 300-token GSM8K prompt (worked pool
  solutions in the chat template, cut to 300 tokens), median over rounds;
- peak RSS of a fresh process that loads the model and decodes (edge.py device_footprint);
- parameters from the GGUF (non-embedding: without the token embedding and output layer).
Then the pair's ratios: per-token decode cost LLM / SLM (seconds per token, llama.cpp's own
engine) and non-embedding parameters LLM / SLM. Writes pair.json and prints the table.

Not here: the cloud's throughput with many sessions (training/bench/cloud_scale.py).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PREFILL_TOKENS = 300


def gsm8k_prompt_tokens(llama) -> list[int]:
    """PREFILL_TOKENS tokens of worked GSM8K pool solutions in the chat template."""
    from relayllm.training.data import gsm8k

    text = "<|im_start|>user\n" + "".join(f"Question: {ex.question}\nAnswer: {ex.answer}\n\n"
                                           for ex in gsm8k.load("pool", 20))
    tokens = llama.tokenize(text.encode(), add_bos=False, special=True)
    if len(tokens) < PREFILL_TOKENS:
        raise RuntimeError("the GSM8K pool's first questions are shorter than the prefill prompt")
    return tokens[:PREFILL_TOKENS]


def prefill(llama, tokens: list[int], rounds: int) -> dict:
    """Median time to evaluate `tokens` from an empty cache (the first token's wait) and prefill tokens/s."""
    times = []
    for _ in range(rounds):
        llama.reset()
        start = time.perf_counter()
        llama.eval(tokens)
        times.append(time.perf_counter() - start)
    ttft = statistics.median(times)
    return {"prompt_tokens": len(tokens), "prefill_s": ttft, "prefill_tok_s": len(tokens) / ttft}


def measure(name: str, rounds: int, tokens: int) -> dict:
    from relayllm.protos import registry
    from relayllm.training.bench.edge import PROMPT, device_footprint, open_llama, paired_decode
    from relayllm.training.eval.machine import decode_cost, model_size

    path = registry.resolve_model(name)
    llama = open_llama(path, n_ctx=2048)
    out = {"name": name, "gguf": str(path), **model_size(path),
           "decode": paired_decode(llama, PROMPT, tokens, rounds),
           "prefill": prefill(llama, gsm8k_prompt_tokens(llama), rounds)}
    llama.close()
    out["step"] = decode_cost(path, tokens=tokens, repeats=rounds)  # one decode step, llama.cpp's own engine
    out["footprint"] = device_footprint(path, "sdk", max_tokens=16)
    return out


def run(rounds: int = 3, tokens: int = 64, out_dir: str | Path | None = None) -> dict:
    from relayllm.protos import registry
    from relayllm.training.eval.machine import git_commit, machine_info

    slm, llm = (measure(n, rounds, tokens) for n in (registry.DEFAULT_SLM, registry.DEFAULT_LLM))
    report = {"commit": git_commit(), "machine": machine_info(), "rounds": rounds, "tokens": tokens,
              "slm": slm, "llm": llm,
              "decode_cost_ratio_llm_over_slm": llm["step"]["s_per_token"] / slm["step"]["s_per_token"],
              "non_embedding_ratio_llm_over_slm": llm["non_embedding_parameters"] / slm["non_embedding_parameters"]}
    out = Path(out_dir or f"runs/bench-pair-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "pair.json").write_text(json.dumps(report, indent=1))
    print(table(report))
    print(f"\nwrote {out / 'pair.json'}", file=sys.stderr)
    return report


def table(r: dict) -> str:
    rows = ["| figure | 0.5B (device SLM) | 1.5B (cloud LLM) |", "|---|---|---|"]

    def row(label, f):
        rows.append(f"| {label} | {f(r['slm'])} | {f(r['llm'])} |")

    row("non-embedding parameters", lambda m: f"{m['non_embedding_parameters'] / 1e6:.0f} M")
    row("decode tok/s, edge SDK", lambda m: f"{m['decode']['sdk']['decode_tok_s']:.1f}")
    row("decode tok/s, llama.cpp create_completion", lambda m: f"{m['decode']['llama_cpp']['decode_tok_s']:.1f}")
    row("SDK / llama.cpp (median of paired rounds)", lambda m: f"{m['decode']['decode_ratio']:.2f}")
    row("one decode step, llama.cpp (ms)", lambda m: f"{m['step']['s_per_token'] * 1000:.1f}")
    row(f"prefill tok/s ({r['slm']['prefill']['prompt_tokens']}-token GSM8K prompt)",
        lambda m: f"{m['prefill']['prefill_tok_s']:.0f}")
    row("time to first token of that prompt (s)", lambda m: f"{m['prefill']['prefill_s']:.2f}")
    row("peak RSS, fresh process, SDK (MiB)", lambda m: f"{m['footprint'].get('rss_peak_mib', float('nan')):.0f}")
    rows.append(f"\nper-token decode cost LLM / SLM: {r['decode_cost_ratio_llm_over_slm']:.2f}x; "
                f"non-embedding parameters LLM / SLM: {r['non_embedding_ratio_llm_over_slm']:.2f}x "
                f"({r['rounds']} rounds of {r['tokens']} tokens)")
    return "\n".join(rows)


def figures(r: dict, pair) -> list:
    """`relayllm bench --only pair` figures (pair: bench/figures.py Figure.pair): each model
    through the SDK against llama.cpp's create_completion, then the pair's cost ratios."""
    figs = []
    for role in ("slm", "llm"):
        m = r[role]
        d = m["decode"]
        figs.append(pair("pair", f"{m['name']} decode tok/s, SDK", d["sdk"]["decode_tok_s"],
                         "llama.cpp create_completion", d["llama_cpp"]["decode_tok_s"], "tok/s",
                         goal=">= 0.97", goal_min=0.97))
        figs.append(pair("pair", f"{m['name']} time to first token, {m['prefill']['prompt_tokens']}-token "
                         "GSM8K prompt", m["prefill"]["prefill_s"] * 1e3, "", None, "ms"))
    slm, llm = r["slm"], r["llm"]
    figs.append(pair("pair", "decode step, LLM (llama.cpp)", llm["step"]["s_per_token"] * 1e3,
                     "decode step, SLM (llama.cpp)", slm["step"]["s_per_token"] * 1e3, "ms"))
    figs.append(pair("pair", "non-embedding parameters, LLM", llm["non_embedding_parameters"] / 1e6,
                     "SLM", slm["non_embedding_parameters"] / 1e6, "M"))
    return figs


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    run(a.rounds, a.tokens, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

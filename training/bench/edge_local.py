"""Edge benchmarks for desktop apps: `relayllm local` against the SDK in process, and a
conversation's turn two with the KV kept against re-evaluating the whole conversation.

    endpoint_vs_sdk(path, max_tokens, rounds)  # tokens/s over HTTP vs in process
    turn_two(path, max_tokens, rounds)         # prompt tokens evaluated, wall times
    in_child("endpoint_vs_sdk", path, ...)     # either, in a fresh process (what the bench runs)

`relayllm bench` (training/bench/cli.py) turns these into figures. Both sides of a pair run
in one process on the same RelayDecoder (same GGUF, prompt, greedy sampling, token limit),
alternating which goes first each round, so a busy neighbour slows both alike.

Every timed decode runs in a fresh worker thread, as the endpoint's does (edge/aio.py starts
one per request). This matters: llama-cpp-python's ggml uses OpenMP, and a thread that keeps
calling it (the main thread, a long-lived worker) keeps an OpenMP team whose idle workers
spin; on a loaded 2-core machine that made the same decode 5-60x slower than from a fresh
thread. Timing the SDK on the main thread against the endpoint's fresh thread gave "SDK 4.2
tok/s, endpoint 47.6 tok/s": a threading artefact, not the SDK. Even from fresh threads the
spinning made single rounds 2-15x slower at random under load, so `in_child` runs these in a
child process with the OpenMP settings `relayllm local` sets for itself
(edge/local_cli.py OPENMP_ENV: OMP_WAIT_POLICY=passive unless the environment sets it;
libgomp reads it once, at load): the endpoint side is timed as users run it, the SDK side
as an app that sets the same variable. The value used is in the result. Benchmarks, not
tests: nothing here asserts a speed.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from relayllm.training.bench.edge import PROMPT, open_llama

TURNS = ("Write a short poem about the sea.", "Now one about the mountains.")
SYSTEM = "You are a helpful assistant."


def _in_fresh_thread(fn):
    """fn() in a new thread, as the endpoint decodes each request (see the module doc)."""
    out: list = []

    def work():
        try:
            out.append((True, fn()))
        except BaseException as exc:  # raised again on the calling thread
            out.append((False, exc))

    worker = threading.Thread(target=work, name="relayllm-bench-decode")
    worker.start()
    worker.join()
    ok, value = out[0]
    if not ok:
        raise value
    return value


def _rate(tokens: int, start: float, first: float, end: float) -> dict:
    """Tokens per second from the request to the last token (the prompt's prefill and, for
    the endpoint, HTTP included: what an app waits for), and after the first token."""
    return {"tokens": tokens, "tok_s": tokens / (end - start), "ttft_s": first - start,
            "decode_tok_s": (tokens - 1) / (end - first) if end > first else float("nan")}


def _sdk_round(decoder, max_tokens: int) -> dict:
    from relayllm.edge import Limits
    from relayllm.edge.events import Result, TextPiece

    decoder.slm.reset()  # both sides prefill the whole prompt
    start, stamps, result = time.perf_counter(), [], None
    for event in decoder.stream(PROMPT, local_only=True, limits=Limits(max_tokens=max_tokens)):
        if isinstance(event, TextPiece):
            stamps.append(time.perf_counter())
        elif isinstance(event, Result):
            result = event
    return _rate(result.slm_tokens, start, stamps[0], stamps[-1])


def _endpoint_round(client, url: str, decoder, max_tokens: int) -> dict:
    decoder.slm.reset()
    start, stamps, usage = time.perf_counter(), [], None
    with client.stream("POST", url + "/completions", json={"prompt": PROMPT, "max_tokens": max_tokens,
                                                           "stream": True, "temperature": 0}) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk["choices"][0]["text"]:
                stamps.append(time.perf_counter())
            usage = chunk.get("usage") or usage
    return _rate(usage["completion_tokens"], start, stamps[0], stamps[-1])


def endpoint_vs_sdk(path: str | Path, max_tokens: int, rounds: int, n_threads: int | None = None) -> dict:
    """Tokens per second through `relayllm local` (HTTP on loopback, streamed, the server's
    own LocalServerThread) against RelayDecoder.stream in process, on one decoder, greedy,
    local-only, `max_tokens` each (PROMPT does not end early: the counts are recorded and
    checked). Rounds alternate which side goes first; one warm-up pair is dropped.
    endpoint/sdk tok_s are medians over rounds; paired_ratio is the median of the per-round
    endpoint / SDK ratios."""
    import httpx

    from relayllm.edge import Limits, RelayDecoder, Sampling
    from relayllm.edge.server import LocalServerThread, LocalService

    decoder = RelayDecoder(open_llama(path, n_threads=n_threads), limits=Limits(max_tokens=max_tokens),
                           sampling=Sampling(temperature=0.0))
    service = LocalService(decoder, max_tokens=max_tokens, mode="local-only")
    pairs = []
    with LocalServerThread(service) as server, httpx.Client(timeout=300) as client:
        sdk = lambda: _in_fresh_thread(lambda: _sdk_round(decoder, max_tokens))  # noqa: E731
        http = lambda: _endpoint_round(client, server.base_url, decoder, max_tokens)  # noqa: E731
        for i in range(rounds + 1):  # pair 0 warms the weights' pages and the HTTP connection
            if i % 2:
                e, s = http(), sdk()
            else:
                s, e = sdk(), http()
            pairs.append((s, e))
    pairs = pairs[1:]
    med = lambda side, key: statistics.median(p[side][key] for p in pairs)  # noqa: E731
    return {"max_tokens": max_tokens, "rounds": rounds, "per_round": [{"sdk": s, "endpoint": e} for s, e in pairs],
            "sdk_tokens": [s["tokens"] for s, _ in pairs], "endpoint_tokens": [e["tokens"] for _, e in pairs],
            "sdk_tok_s": med(0, "tok_s"), "endpoint_tok_s": med(1, "tok_s"),
            "sdk_decode_tok_s": med(0, "decode_tok_s"), "endpoint_decode_tok_s": med(1, "decode_tok_s"),
            "sdk_ttft_s": med(0, "ttft_s"), "endpoint_ttft_s": med(1, "ttft_s"),
            "paired_ratio": statistics.median(e["tok_s"] / s["tok_s"] for s, e in pairs)}


def turn_two(path: str | Path, max_tokens: int, rounds: int, n_threads: int | None = None) -> dict:
    """Turn two of a conversation (SYSTEM, TURNS), two ways, alternating which goes first:
    - kept: Conversation.say after turn one, on the KV cache turn one left (only the new
      tokens are evaluated);
    - reeval: RelayDecoder.chat on the same messages from an empty cache (the whole
      conversation is evaluated again, as an app that keeps no KV would).
    Evaluated token counts are Result.prompt_evaluated_tokens; wall times are whole turns
    (prompt + a greedy reply of up to max_tokens; its text may differ a little between the two
    ways, since turn one's reply was evaluated token by token on one side and in a batch on
    the other: the reply token counts are recorded), medians over rounds."""
    from relayllm.edge import Conversation, Limits, RelayDecoder, Sampling

    decoder = RelayDecoder(open_llama(path, n_threads=n_threads), limits=Limits(max_tokens=max_tokens),
                           sampling=Sampling(temperature=0.0))

    def kept():
        decoder.slm.reset()
        talk = Conversation(decoder, system=SYSTEM)
        one = talk.say(TURNS[0])  # turn one: untimed, leaves its KV
        held = {"turn_one_prompt_tokens": one.prompt_tokens, "turn_one_kv_tokens": decoder.slm.n_tokens}
        start = time.perf_counter()
        result = _in_fresh_thread(lambda: talk.say(TURNS[1]))
        return result, time.perf_counter() - start, talk.messages[:-1], held

    def reeval(messages):
        decoder.slm.reset()
        start = time.perf_counter()
        result = _in_fresh_thread(lambda: decoder.chat(messages))
        return result, time.perf_counter() - start

    rows = []
    for i in range(rounds):
        if i % 2:
            _, _, messages, _ = kept()  # the messages of turn two (greedy: the same every round)
            again, again_s = reeval(messages)
            mine, mine_s, _, held = kept()
        else:
            mine, mine_s, messages, held = kept()
            again, again_s = reeval(messages)
        rows.append({**held, "prompt_tokens": mine.prompt_tokens, "evaluated_kept": mine.prompt_evaluated_tokens,
                     "evaluated_reeval": again.prompt_evaluated_tokens, "reeval_prompt_tokens": again.prompt_tokens,
                     "reply_tokens_kept": mine.slm_tokens, "reply_tokens_reeval": again.slm_tokens,
                     "same_reply": mine.text == again.text, "turn_s_kept": mine_s, "turn_s_reeval": again_s})
    first = rows[0]
    return {"max_tokens": max_tokens, "rounds": rounds, "per_round": rows,
            **{k: first[k] for k in ("prompt_tokens", "evaluated_kept", "evaluated_reeval", "reeval_prompt_tokens",
                                     "turn_one_prompt_tokens", "turn_one_kv_tokens")},
            "counts_same_every_round": all(r["evaluated_kept"] == first["evaluated_kept"]
                                           and r["evaluated_reeval"] == first["evaluated_reeval"] for r in rows),
            "turn_s_kept": statistics.median(r["turn_s_kept"] for r in rows),
            "turn_s_reeval": statistics.median(r["turn_s_reeval"] for r in rows)}


def in_child(kind: str, path: str | Path, max_tokens: int, rounds: int, n_threads: int | None = None) -> dict:
    """endpoint_vs_sdk or turn_two in a fresh Python process with OpenMP's idle threads
    sleeping (see the module doc); its result, with `omp_wait_policy`."""
    if kind not in ("endpoint_vs_sdk", "turn_two"):
        raise ValueError(f"kind must be endpoint_vs_sdk or turn_two, got {kind!r}")
    from relayllm.edge.local_cli import openmp_env

    env = dict(os.environ)
    openmp_env(env)  # what `relayllm local` sets for itself
    args = [kind, str(path), str(max_tokens), str(rounds), str(n_threads or 0)]
    proc = subprocess.run([sys.executable, "-m", __name__, *args], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} failed in its process: {proc.stderr.strip()[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "omp_wait_policy": env["OMP_WAIT_POLICY"]}


if __name__ == "__main__":  # in_child's side: kind path max_tokens rounds n_threads
    kind, path, max_tokens, rounds, n_threads = sys.argv[1:6]
    run = {"endpoint_vs_sdk": endpoint_vs_sdk, "turn_two": turn_two}[kind]
    print(json.dumps(run(path, int(max_tokens), int(rounds), int(n_threads) or None)))

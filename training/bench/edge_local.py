"""Edge benchmarks for desktop apps: `relayllm local` against the SDK in process, and a
conversation's turn two with the KV kept against re-evaluating the whole conversation.

Measured side by side in one run, same decoder, alternating. Not wired into the `relayllm
bench` table yet: call endpoint_vs_sdk(path, tokens, rounds) and turn_two(path).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from relayllm.training.bench.edge import PROMPT, _run_from_stamps, open_llama, sdk_decode
# --- the OpenAI-compatible endpoint against the SDK in process, and conversations -----------

def endpoint_vs_sdk(path: str | Path, max_tokens: int, rounds: int) -> dict:
    """Decode tokens per second through `relayllm local` (streamed, over HTTP on loopback)
    against the SDK in process, alternating on the same decoder; ratio per pair, median."""
    import httpx

    from relayllm.edge import Limits, RelayDecoder
    from relayllm.edge.server import LocalServerThread, LocalService

    decoder = RelayDecoder(open_llama(path), limits=Limits(max_total_tokens=max_tokens))
    pairs = []
    with LocalServerThread(LocalService(decoder, max_tokens=max_tokens, mode="local-only")) as server:
        for _ in range(rounds + 1):  # the first pair warms up
            decoder.llm.reset()
            sdk = sdk_decode(decoder.llm, PROMPT, max_tokens)
            decoder.llm.reset()
            start, stamps = time.perf_counter(), []
            with httpx.stream("POST", server.base_url + "/completions", timeout=120,
                              json={"prompt": PROMPT, "max_tokens": max_tokens, "stream": True}) as reply:
                for line in reply.iter_lines():
                    if line.startswith("data: {") and '"text": ""' not in line:
                        stamps.append(time.perf_counter())
            http = _run_from_stamps("endpoint", start, stamps[0], stamps[-1], len(stamps))
            pairs.append((sdk, http))
    pairs = pairs[1:]
    return {"max_tokens": max_tokens, "rounds": rounds,
            "sdk_tok_s": statistics.median(s.decode_tok_s for s, _ in pairs),
            "endpoint_tok_s": statistics.median(h.decode_tok_s for _, h in pairs),
            "ratio": statistics.median(h.decode_tok_s / s.decode_tok_s for s, h in pairs)}


def turn_two(path: str | Path, max_tokens: int = 32) -> dict:
    """Tokens llama.cpp evaluates for turn two of a conversation: KV kept (RelayDecoder.chat)
    against re-evaluating the whole conversation from an empty cache."""
    from relayllm.edge import Conversation, Limits, RelayDecoder

    decoder = RelayDecoder(open_llama(path), limits=Limits(max_total_tokens=max_tokens))
    talk = Conversation(decoder, system="You are a helpful assistant.")
    talk.say("Write a short poem about the sea.")
    start = time.perf_counter()
    kept = talk.say("Now one about the mountains.")
    kept_s = time.perf_counter() - start
    decoder.llm.reset()
    start = time.perf_counter()
    again = decoder.chat(talk.messages[:-1])
    again_s = time.perf_counter() - start
    return {"prompt_tokens": kept.prompt_tokens, "evaluated_kept": kept.prompt_evaluated_tokens,
            "evaluated_reeval": again.prompt_evaluated_tokens, "turn_s_kept": kept_s, "turn_s_reeval": again_s}

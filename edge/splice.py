"""The cloud's view of the answer, and the splice of the cloud's tokens into the SLM's context.

CloudView keeps what the LLM is shown: the prompt and everything written so far with every
relay command removed, both as the SLM's token ids (token mode: same tokenizer on both sides)
and as text (text mode). `call_and_splice` asks the LLM for N tokens, streams them to the app,
and evaluates only those N tokens on top of the SLM's KV cache: the prefix is never
evaluated again. Not here: the session and the background sync (edge/link.py), the decode
loop itself (edge/decode_loop.py).
"""

from __future__ import annotations

import time
from typing import Iterator

from relayllm.edge.events import CallFinished, CallStarted
from relayllm.protos.protocol import call_size, drops_command

_FINISH_NAMES = {1: "length", 2: "eos", 3: "cancelled", 4: "deadline"}


def finish_name(value) -> str:
    return _FINISH_NAMES.get(int(value), "unspecified")


def append_tokens(slm, tokens) -> None:
    """The splice: evaluates tokens written elsewhere (the cloud) on top of the SLM's
    context, as one batch (llama.cpp splits it by n_batch). The prefix is not touched."""
    if tokens:
        slm.eval(list(tokens))


class CloudView:
    """What the LLM is shown, kept as ids and as text while the answer is written.

    SLM tokens whose text the command detector is still deciding about (a possible command)
    are held in a region; when the detector decides, their ids are kept as they are, or,
    when they held a command, replaced by the tokens of their text without it."""

    def __init__(self, vocab, prompt_ids: list[int], clean_prompt: str, prompt_was_clean: bool):
        self.vocab = vocab
        self.text: list[str] = [clean_prompt]
        self.ids: list[int] = prompt_ids[:] if prompt_was_clean else vocab.markup(clean_prompt)
        self.region_ids: list[int] = []
        self.region_text: list[str] = []
        self.region_command = False

    def whole_text(self) -> str:
        return "".join(self.text)

    def add_slm_token(self, token: int, segments: list, pending: bool) -> None:
        """A token the SLM wrote; `segments` is what the detector made of its text."""
        if not self.region_ids and len(segments) == 1 and not pending and type(segments[0]) is str:
            self.ids.append(token)
            self.text.append(segments[0])
            return
        self.region_ids.append(token)
        for item in segments:
            if type(item) is str:
                self.region_text.append(item)
                self.text.append(item)
            else:
                self.region_command = True
        if not pending:
            self.close_region()

    def add_held_text(self, text: str) -> None:
        """Text the detector held and then released as plain text."""
        self.region_text.append(text)
        self.text.append(text)

    def close_region(self) -> None:
        if not self.region_ids:
            return
        if self.region_command:
            self.ids.extend(self.vocab.text("".join(self.region_text)))
        else:
            self.ids.extend(self.region_ids)
        self.region_ids, self.region_text, self.region_command = [], [], False

    def add_llm(self, ids: list[int], texts: list[str]) -> None:
        self.ids.extend(ids)
        self.text.extend(texts)


def _call_error(exc: Exception) -> str:
    reason, detail = getattr(exc, "reason", None), str(exc)
    return detail if reason and detail.startswith(reason) else f"{reason or type(exc).__name__}: {detail}"


def call_and_splice(req, requested: int, trigger: str, drop_from: int | None = None) -> Iterator:
    """Asks the LLM for up to `requested` tokens and splices them into the SLM's context.
    A generator of events (for `yield from`); returns (tokens spliced, the text ended).
    `drop_from`: a KV position; when the LLM wrote something, the SLM's context is cut back to
    it before the splice (command_context="drop": the command leaves the SLM's context)."""
    # 1) How many tokens this call may have: the request's limits, the day's budget, the room.
    limits = req.limits
    n = call_size(requested, calls=req.calls, max_calls=limits.max_calls, llm_tokens=req.llm_tokens,
                  max_llm_tokens=limits.max_llm_tokens, total_tokens=req.slm_tokens + req.llm_tokens,
                  max_total_tokens=limits.max_total_tokens, room=req.room())
    if n <= 0:
        return 0, False
    if req.link.local_only:
        return 0, False  # the user's choice, not a degradation: the Result says local_only
    if req.link.cloud is None:
        req.degrade("offline: no cloud configured")
        return 0, False
    n = req.link.budget_for(n)
    if n <= 0:
        req.degrade("budget: the day's cloud budget (in LLM tokens) is spent")
        return 0, False
    n = req.link.fit_call(n)
    # 2) The call: stream the LLM's pieces to the app as they arrive.
    req.calls += 1
    yield CallStarted(n, trigger)
    started = time.perf_counter()
    ids: list[int] = []
    texts: list[str] = []
    error = usage = None
    ended = False
    token_mode = False
    try:
        stream, token_mode = req.link.help(req.view, n, req.sampling, stopped=lambda: req.cancelled)
        for piece in stream:
            if token_mode:
                token = int(piece.token_id)
                if req.vocab.is_end(token):
                    ended = True
                    continue
                ids.append(token)
                text = req.utf8.decode(req.vocab.token_bytes(token))
            else:
                text = piece.text
            if text:
                texts.append(text)
                yield req.emit(text, "llm")
        done = req.link.last_done()
        if done is not None:
            usage = done.usage
            reason = finish_name(done.finish_reason)
            if reason == "eos":
                ended = True
            elif reason in ("deadline", "cancelled"):
                error = f"{reason}: the cloud stopped the call early"
    except Exception as exc:  # offline first: any failure of the call, the SLM goes on
        error = _call_error(exc)
    # 3) The splice: only the new tokens are evaluated, on top of the kept KV cache.
    if not token_mode:
        ids = req.vocab.text("".join(texts)) if texts else []
    if drop_from is not None and drops_command(req.d.command_context, len(ids)) and req.slm._ctx.kv_cache_seq_rm(-1, drop_from, -1):
        req.slm.n_tokens = drop_from
    ids = ids[: max(0, req.room() - 1)]
    append_tokens(req.slm, ids)
    req.llm_tokens += len(ids)
    req.link.spent(len(ids), "".join(texts))
    req.view.add_llm(ids, texts)
    if usage is not None:
        req.prefilled += int(usage.prefilled_tokens)
        req.reused += int(usage.reused_tokens)
    if error is not None:
        req.degrade(f"call {req.calls}: {error}")
    yield CallFinished(n, len(ids), time.perf_counter() - started, error is None, error, usage)
    return len(ids), ended

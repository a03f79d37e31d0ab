"""One answer: the decode loop on llama.cpp, with calls to the cloud where the SLM or a router asks.

`Request(...).events()` is what RelayDecoder.stream returns. The SLM samples token by token;
its text goes through a CommandDetector; when the SLM writes `<call>N</call>` (or the router
fires, or the prompt itself ends with a command) the cloud writes up to N tokens, which are
spliced into the SLM's context (edge/splice.py). The prompt is prefilled reusing the longest
prefix already in the KV cache, so a conversation's turn two evaluates only its new tokens.
Not here: the public API (edge/decoder.py), the cloud session (edge/link.py).
"""

from __future__ import annotations

import codecs
import time
from typing import Iterator

import numpy as np

from relayllm.edge.events import Event, Result, TextPiece
from relayllm.edge.routers import TokenStep
from relayllm.edge.sampling import make_sampler
from relayllm.edge.splice import CloudView, call_and_splice
from relayllm.protos.grammar import CommandDetector, command_at_end, remove_commands


def call_probability(logits, call_id: int) -> float:
    """softmax(logits)[call_id], skipping the sum when it is clearly small (most tokens)."""
    top = float(logits.max())
    if logits[call_id] - top < -20.0:
        return 0.0
    z = np.exp(logits.astype(np.float64) - top)
    return float(z[call_id] / z.sum())


class Request:
    """The state of one answer: counters, spans, the detector, the cloud's view."""

    def __init__(self, decoder, prompt_text: str, prompt_ids: list[int], *, link, router, limits, sampling):
        self.d = decoder
        self.slm = decoder.slm
        self.vocab = decoder.vocab
        self.link = link
        self.router = router
        self.limits = limits
        self.sampling = sampling
        self.prompt_text = prompt_text
        self.prompt_ids = prompt_ids
        self.spans: list[list] = []  # [author, [texts]]
        self.slm_tokens = self.llm_tokens = self.calls = 0
        self.prefilled = self.reused = 0
        self.prompt_evaluated = 0
        self.reasons: list[str] = []
        self.detector = CommandDetector()
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self.view: CloudView | None = None  # kept only when text may go to the cloud
        self.cancelled = False

    # -- text out -------------------------------------------------------------------------
    def emit(self, text: str, author: str) -> TextPiece:
        if self.spans and self.spans[-1][0] == author:
            self.spans[-1][1].append(text)
        else:
            self.spans.append([author, [text]])
        return TextPiece(text, author)

    def text_so_far(self) -> str:
        return "".join("".join(texts) for _, texts in self.spans)

    def result(self, finish_reason: str, started: float) -> Result:
        spans = [(author, "".join(texts)) for author, texts in self.spans]
        total = self.slm_tokens + self.llm_tokens
        return Result(text="".join(t for _, t in spans), spans=spans, slm_tokens=self.slm_tokens,
                      llm_tokens=self.llm_tokens, calls=self.calls,
                      llm_token_ratio=self.llm_tokens / total if total else 0.0,
                      wall_s=time.perf_counter() - started, degraded=bool(self.reasons),
                      degraded_reasons=list(self.reasons), finish_reason=finish_reason,
                      prefilled_tokens=self.prefilled, reused_tokens=self.reused,
                      prompt_tokens=len(self.prompt_ids), prompt_evaluated_tokens=self.prompt_evaluated,
                      local_only=self.link.local_only)

    def degrade(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    def cancel(self) -> None:
        """From any thread: stop at the next token and cut the cloud call in flight."""
        self.cancelled = True
        self.link.cancel()

    # -- the SLM's context ------------------------------------------------------------------
    def prefill(self, prompt_ids: list[int]) -> None:
        """Evaluates the prompt, reusing the longest prefix already in the KV cache."""
        slm = self.slm
        reuse = 0
        if slm.n_tokens > 0 and prompt_ids:
            held = slm.input_ids[: slm.n_tokens]
            n = min(len(held), len(prompt_ids))
            differ = np.nonzero(held[:n] != np.asarray(prompt_ids[:n], dtype=held.dtype))[0]
            reuse = int(differ[0]) if len(differ) else n
            reuse = min(reuse, len(prompt_ids) - 1)  # re-evaluate at least one: fresh logits
        if reuse > 0 and slm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            slm.n_tokens = reuse
        else:
            slm.reset()
            reuse = 0
        self.prompt_evaluated = len(prompt_ids) - reuse
        slm.eval(prompt_ids[reuse:])

    def command_start(self) -> int | None:
        """The KV position of the `<call>` token that opened the command just written."""
        held = self.slm.input_ids[: self.slm.n_tokens]
        where = np.nonzero(held == self.d.call_open_id)[0]
        return int(where[-1]) if len(where) else None

    def unwrite_command(self, start: int) -> None:
        """Drop mode, a command no one answered (offline, a limit, a failed call): it leaves
        the SLM's context as an answered one does (a drop-trained SLM has never seen one there
        and, shown one, repeats `1</call>` to the end), and the token before it is evaluated
        again, so that the next token is sampled from fresh logits."""
        last = int(self.slm.input_ids[start - 1])
        if self.slm._ctx.kv_cache_seq_rm(-1, start - 1, -1):
            self.slm.n_tokens = start - 1
            self.slm.eval([last])

    def room(self) -> int:
        """Tokens that still fit in the SLM's context."""
        return self.slm.n_ctx() - self.slm.n_tokens

    def release_held(self) -> Iterator[TextPiece]:
        """Before the LLM writes: text held as a possible command is plain SLM text."""
        held = self.detector.flush()
        if held:
            if self.view is not None:
                self.view.add_held_text(held)
            yield self.emit(held, "slm")
        if self.view is not None:
            self.view.close_region()

    # -- the decode loop ---------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        # One request at a time per decoder (the decoder raises DecoderBusy otherwise).
        started = time.perf_counter()
        self.d.request_started(self)
        try:
            result = yield from self._decode(started)
        finally:
            self.d.request_done(self)
        yield result

    def _decode(self, started: float):
        import llama_cpp

        # 1) Check and prefill the prompt; start the cloud's view when text may go out.
        slm, limits, prompt_text, prompt_ids = self.slm, self.limits, self.prompt_text, self.prompt_ids
        if not prompt_ids:  # (RelayDecoder.request already checked that the prompt fits the context)
            raise ValueError("the prompt is empty")
        if self.link.active:
            clean = remove_commands(prompt_text)
            self.view = CloudView(self.vocab, prompt_ids, clean, clean == prompt_text)
        self.prefill(prompt_ids)

        # 2) Hot-loop locals: this loop runs once per token.
        vocab, ctx = slm._model.vocab, slm._ctx.ctx
        is_eog, sample = llama_cpp.llama_vocab_is_eog, llama_cpp.llama_sampler_sample
        sampler = make_sampler(self.sampling)
        chain = sampler.sampler
        router, n_vocab = self.router, slm.n_vocab()
        nudge = self.d.call_nudge if self.link.active else None
        drop = self.d.command_context == "drop"
        token_bytes, decode, feed = self.vocab.token_bytes, self.utf8.decode, self.detector.feed
        view = self.view
        sync = view is not None and self.link.sync_every_tokens > 0
        finish = "length"
        no_calls = False  # drop mode, after an unanswered command: `<call>` is not sampled again
        # 3) A prompt that ends with a command asks for help before the SLM writes.
        command = command_at_end(prompt_text)
        ended = False
        if command is not None:
            _, ended = yield from call_and_splice(self, command.tokens, "command")
            if ended:
                finish = "eos"
        # 4) Token by token: limits, sample, the router, the text, the detector, eval.
        while not ended:
            if self.cancelled:
                finish = "cancelled"
                break
            if self.slm_tokens + self.llm_tokens >= limits.max_total_tokens:
                finish = "length"
                break
            if slm.n_tokens >= slm.n_ctx():
                finish = "context"
                break
            if no_calls:  # the SLM writes on alone where it would have asked (its next best token)
                np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))[self.d.call_open_id] = -np.inf
            token = sample(chain, ctx, -1)
            if nudge is not None and token != nudge[0] and not self.detector.pending and self.calls < limits.max_calls:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                if call_probability(logits, nudge[0]) >= nudge[1]:
                    token = nudge[0]  # the calibration: the SLM writes `<call>`, then N and `</call>` itself
            if router is not None:
                logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                wanted = int(router.decide(TokenStep(logits, token, self.slm_tokens + self.llm_tokens,
                                                     self.text_so_far())))
                if wanted > 0:
                    yield from self.release_held()
                    spliced, ended = yield from call_and_splice(self, wanted, "router")
                    if ended:
                        finish = "eos"
                        break
                    if spliced:
                        continue  # the LLM wrote here: the SLM samples afresh after its tokens
            if is_eog(vocab, token):
                finish = "eos"
                break
            segments = feed(decode(token_bytes(token)))
            command = None
            for item in segments:
                if type(item) is str:
                    yield self.emit(item, "slm")
                elif command is None:
                    command = item
            slm.eval([token])
            self.slm_tokens += 1
            if view is not None:
                view.add_slm_token(token, segments, bool(self.detector.pending))
                if sync:
                    self.link.maybe_sync(view)
            if command is not None:
                yield from self.release_held()
                start = self.command_start() if drop else None
                spliced, ended = yield from call_and_splice(self, command.tokens, "command", drop_from=start)
                if ended:
                    finish = "eos"
                    break
                if not spliced and start is not None:
                    self.unwrite_command(start)
                    no_calls = True
        # 5) What the detector still holds is plain text.
        tail = self.detector.flush() + self.utf8.decode(b"", final=True)
        if tail:
            yield self.emit(tail, "slm")
        return self.result(finish, started)

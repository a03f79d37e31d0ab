"""The edge decoder: an on-device SLM (llama.cpp) that hands a few tokens to a cloud LLM.

    from relayllm.edge.relay import RelayDecoder, Limits
    from relayllm.edge.client import CloudClient

    decoder = RelayDecoder("slm.gguf", cloud=CloudClient("cloud.example:50051"))
    for event in decoder.stream("What is 17 * 24?"):
        ...                        # TextPiece / CallStarted / CallFinished, last: Result
    result = decoder.generate("What is 17 * 24?")   # or just the Result

How it works. The SLM decodes token by token on llama.cpp's KV cache. Its text goes
through a CommandDetector; when the SLM writes `<call>N</call>` (or the router hook fires,
or the prompt itself ends with a command) the edge asks the cloud for N tokens (clamped
by `Limits`), streams them to the app as they arrive, and appends them to the SLM's
context: only those new tokens are evaluated, never the prefix again. The LLM is shown
the prompt plus everything written so far with every command removed. When both sides
share a tokenizer (same fingerprint) they speak in token ids and the LLM's tokens are
spliced by id; otherwise the LLM's text is tokenized by the SLM.

Offline first. With no cloud, or when a call fails (unreachable, past its deadline,
broken stream, circuit open), the SLM goes on by itself: whatever the LLM had already
written is kept, nothing is lost, and the Result says it degraded and why. No call waits
past `deadline_s`. With `sync_every_tokens=K`, every K SLM tokens the text is sent to the
cloud in a background thread (session sync) so that its cache is warm when a call comes;
this never blocks decoding (a sync still running is simply skipped).

From a GUI. A decoder owns its llama.cpp context: run one request at a time per decoder,
off the UI thread.
- Threaded toolkits (Qt, Tk, wx...): run `for event in decoder.stream(prompt)` in a worker
  thread and post each event to the UI loop (Qt: a signal; Tk: `root.after(0, ...)` or a
  queue polled by `after`). To cancel, set a flag that the worker checks between events
  and call `close()` on the generator (or just break out of the loop): decoding stops at
  the next token and an in-flight cloud call is cancelled.
- asyncio-based UIs: `async for event in decoder.astream(prompt)`; decoding runs in a
  worker thread and events come through an asyncio.Queue, so the loop never blocks.
  Cancelling the task (or `aclose()` on the iterator) stops the decoder at the next token.
"""

from __future__ import annotations

import asyncio
import codecs
import ctypes
import threading
import time
from dataclasses import InitVar, dataclass
from pathlib import Path
from typing import AsyncIterator, Iterator

import numpy as np

from relayllm.protos.grammar import CommandDetector, command_at_end, remove_commands
from relayllm.edge.events import CallFinished, CallStarted, Event, Result, TextPiece


@dataclass(frozen=True)
class Limits:
    """Per-request limits. `max_total_tokens` counts response tokens (SLM + LLM, in the
    SLM's tokenizer); `max_tokens=` is accepted as another name for it."""

    max_calls: int = 8
    max_llm_tokens: int = 256
    max_total_tokens: int = 512
    max_tokens: InitVar[int | None] = None

    def __post_init__(self, max_tokens):
        if max_tokens is not None:
            object.__setattr__(self, "max_total_tokens", int(max_tokens))
        for name in ("max_calls", "max_llm_tokens", "max_total_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Sampling:
    """Sampling on the SLM, and what the LLM is asked to use. temperature 0 = greedy;
    top_k 0 = no limit. The edge uses `seed` as given (0 is a seed like any other)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"Sampling.temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"Sampling.top_k must be >= 0, got {self.top_k}")


@dataclass(slots=True)
class TokenStep:
    """What a router sees for each token the SLM is about to write.

    logits: the SLM's logits for this position (a view into llama.cpp's buffer, valid
    during `decide` only: copy it to keep it); candidate: the token the SLM would write
    (also `token`); position: index of this token in the response; text: the response so
    far (as shown to the app)."""

    logits: np.ndarray
    candidate: int
    position: int
    text: str

    @property
    def token(self) -> int:
        return self.candidate


def load_slm(path: str | Path, *, n_ctx: int = 2048, **llama_kwargs):
    """A llama_cpp.Llama for a GGUF file, with a readable error when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SLM model file not found: {path}")
    from relayllm.edge.models import quiet_llama

    return quiet_llama(model_path=str(path), n_ctx=n_ctx, **llama_kwargs)


def append_tokens(llm, tokens) -> None:
    """The splice: evaluates tokens written elsewhere (the cloud) on top of the SLM's
    context, as one batch (llama.cpp splits it by n_batch). The prefix is not touched."""
    if tokens:
        llm.eval(list(tokens))


def _make_sampler(sampling: Sampling):
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    if sampling.temperature == 0.0:
        sampler.add_greedy()
    else:
        if sampling.top_k > 0:
            sampler.add_top_k(sampling.top_k)
        if sampling.top_p < 1.0:
            sampler.add_top_p(sampling.top_p, 1)
        sampler.add_temp(sampling.temperature)
        sampler.add_dist(sampling.seed & 0xFFFFFFFF)
    return sampler


class RelayDecoder:
    """Decodes with an on-device SLM and asks the cloud LLM for help (see the module doc).

    slm: a GGUF path or a llama_cpp.Llama. cloud: a relayllm.edge.client.CloudClient, or
    None (offline). router: an object whose `decide(TokenStep) -> int` returns how many
    tokens the LLM should write from here (0: the SLM writes its candidate). deadline_s:
    per cloud call (the stricter of it and the client's `deadline_s` applies). sync_every_tokens: background session sync period (0 = off).
    chat: apply the GGUF's chat template to the prompt (a single user turn).
    """

    def __init__(self, slm, *, cloud=None, limits: Limits = Limits(), sampling: Sampling = Sampling(),
                 router=None, deadline_s: float = 10.0, sync_every_tokens: int = 0, chat: bool = False,
                 n_ctx: int = 2048, call_threshold: float | None = None, call_tokens: int = 4):
        self.llm = load_slm(slm, n_ctx=n_ctx) if isinstance(slm, (str, Path)) else slm
        self.cloud = cloud
        # call_threshold: relay with a knob between accuracy and LLM share. The LLM writes
        # `call_tokens` tokens whenever the relay SLM's own probability of `<call>` reaches
        # the threshold (routers.CallTokenRouter). None: the SLM's commands as it writes them.
        if call_threshold is not None:
            if router is not None:
                raise ValueError("give a router or a call_threshold, not both")
            ids = self.llm.tokenize(b"<call>", add_bos=False, special=True)
            if len(ids) != 1:
                raise ValueError("call_threshold needs an SLM with `<call>` as one token (a relay-trained SLM); "
                                 f"this one splits it into {len(ids)} tokens")
            from relayllm.edge.routers import CallTokenRouter

            router = CallTokenRouter(ids[0], call_threshold, call_tokens)
        self.limits = limits
        self.sampling = sampling
        self.router = router
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        # The stricter of this and the client's own deadline bounds every cloud call.
        self.deadline_s = min(float(deadline_s), float(getattr(cloud, "deadline_s", None) or deadline_s))
        if sync_every_tokens < 0:
            raise ValueError(f"sync_every_tokens must be >= 0, got {sync_every_tokens}")
        self.sync_every_tokens = int(sync_every_tokens)
        self.chat = chat
        self._pieces: dict[int, bytes] = {}  # token id -> its bytes (special tokens as "")

    # -- public API -----------------------------------------------------------------------
    def stream(self, prompt: str) -> Iterator[Event]:
        """Events as the answer is written; the last one is the Result. Closing the
        generator stops decoding (and cancels a cloud call in flight)."""
        return _Request(self, prompt).events()

    def generate(self, prompt: str) -> Result:
        result = None
        for event in self.stream(prompt):
            result = event
        return result

    async def astream(self, prompt: str) -> AsyncIterator[Event]:
        """`stream` for asyncio: decoding runs in a worker thread, events come through an
        asyncio.Queue. Cancelling (or aclose()) stops the decoder at the next token."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        end = object()

        def post(item) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                stop.set()

        def work() -> None:
            events = self.stream(prompt)
            try:
                for event in events:
                    if stop.is_set():
                        break
                    post(event)
            except BaseException as exc:  # handed to the awaiting side, raised there
                post(_Failure(exc))
            finally:
                events.close()
                post(end)

        worker = threading.Thread(target=work, name="relayllm-decoder", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is end:
                    return
                if isinstance(item, _Failure):
                    raise item.error
                yield item
        finally:
            stop.set()
            if worker.is_alive():
                await asyncio.to_thread(worker.join)

    async def agenerate(self, prompt: str) -> Result:
        result = None
        async for event in self.astream(prompt):
            result = event
        return result

    # -- helpers shared by requests -----------------------------------------------------------
    def token_bytes(self, token: int) -> bytes:
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            vocab = self.llm._model.vocab
            size = 32
            while True:
                buf = ctypes.create_string_buffer(size)
                n = llama_cpp.llama_token_to_piece(vocab, token, buf, size, 0, False)
                if n >= 0:
                    piece = buf.raw[:n]
                    break
                size = -n
            self._pieces[token] = piece
        return piece

    def prompt_text(self, prompt: str) -> str:
        if not self.chat:
            return prompt
        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("this GGUF has no chat template: use chat=False")
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text_of(token: int) -> str:
            return self.llm.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

        formatter = Jinja2ChatFormatter(template=template, eos_token=text_of(self.llm.token_eos()),
                                        bos_token=text_of(self.llm.token_bos()), add_generation_prompt=True)
        return formatter(messages=[{"role": "user", "content": prompt}]).prompt

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True) if text else []


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


class _Request:
    """One answer: the decode loop and its bookkeeping."""

    def __init__(self, decoder: RelayDecoder, prompt: str):
        self.d = decoder
        self.llm = decoder.llm
        self.limits = decoder.limits
        self.prompt = prompt
        self.spans: list[list] = []  # [author, [texts]]
        self.slm_tokens = self.llm_tokens = self.calls = 0
        self.prefilled = self.reused = 0
        self.reasons: list[str] = []
        self.detector = CommandDetector()
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        # What the LLM is shown (commands removed), kept only when there is a cloud:
        # as the SLM's token ids (token mode) and as text (text mode).
        self.tracking = decoder.cloud is not None
        self.cloud_ids: list[int] = []
        self.cloud_text: list[str] = []
        # SLM tokens whose text the detector is still deciding about (a possible command).
        self.region_ids: list[int] = []
        self.region_text: list[str] = []
        self.region_command = False
        self.session = None
        self.token_mode = False
        self.sync_thread: threading.Thread | None = None
        self.since_sync = 0

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
                      prefilled_tokens=self.prefilled, reused_tokens=self.reused)

    def degrade(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.append(reason)

    # -- the SLM's context ------------------------------------------------------------------
    def prefill(self, prompt_ids: list[int]) -> None:
        """Evaluates the prompt, reusing the longest prefix already in the KV cache."""
        llm = self.llm
        reuse = 0
        if llm.n_tokens > 0 and prompt_ids:
            held = llm.input_ids[: llm.n_tokens]
            n = min(len(held), len(prompt_ids))
            differ = np.nonzero(held[:n] != np.asarray(prompt_ids[:n], dtype=held.dtype))[0]
            reuse = int(differ[0]) if len(differ) else n
            reuse = min(reuse, len(prompt_ids) - 1)  # re-evaluate at least one: fresh logits
        if reuse > 0 and llm._ctx.kv_cache_seq_rm(-1, reuse, -1):
            llm.n_tokens = reuse
        else:
            llm.reset()
            reuse = 0
        llm.eval(prompt_ids[reuse:])

    def room(self) -> int:
        """Tokens that still fit in the SLM's context."""
        return self.llm.n_ctx() - self.llm.n_tokens

    # -- the cloud's view of the text --------------------------------------------------------
    def track_slm_token(self, token: int, segments: list) -> None:
        if not self.region_ids and len(segments) == 1 and not self.detector.pending \
                and type(segments[0]) is str:
            self.cloud_ids.append(token)
            self.cloud_text.append(segments[0])
            return
        self.region_ids.append(token)
        for item in segments:
            if type(item) is str:
                self.region_text.append(item)
                self.cloud_text.append(item)
            else:
                self.region_command = True
        if not self.detector.pending:
            self.close_region()

    def close_region(self) -> None:
        """The detector has decided about the held tokens: keep their ids as they are, or,
        when they held a command, the tokens of their text without it."""
        if not self.region_ids:
            return
        if self.region_command:
            self.cloud_ids.extend(self.d.tokenize("".join(self.region_text), add_bos=False))
        else:
            self.cloud_ids.extend(self.region_ids)
        self.region_ids, self.region_text, self.region_command = [], [], False

    def release_held(self) -> Iterator[TextPiece]:
        """Before the LLM writes: text held as a possible command is plain SLM text."""
        held = self.detector.flush()
        if held:
            if self.tracking:
                self.region_text.append(held)
                self.cloud_text.append(held)
            yield self.emit(held, "slm")
        if self.tracking:
            self.close_region()

    # -- the cloud --------------------------------------------------------------------------
    def open_session(self):
        """The cloud session (made on first use, by a call or a sync)."""
        if self.session is None:
            from relayllm.protos.fingerprint import tokenizer_fingerprint

            info = self.d.cloud.info()
            mine = tokenizer_fingerprint(self.llm)
            session = self.d.cloud.session()
            self.token_mode = bool(info.tokenizer_fingerprint) and info.tokenizer_fingerprint == mine
            self.session = session
        return self.session

    def context_kwargs(self, ids: list[int], text: str) -> dict:
        return {"tokens": ids} if self.token_mode else {"text": text}

    def maybe_sync(self) -> None:
        self.since_sync += 1
        if self.since_sync < self.d.sync_every_tokens:
            return
        self.since_sync = 0
        if self.sync_thread is not None and self.sync_thread.is_alive():
            return  # the previous sync is still on the wire: never block decoding
        ids, text = list(self.cloud_ids), "".join(self.cloud_text)
        self.sync_thread = threading.Thread(target=self.sync_job, args=(ids, text), daemon=True,
                                            name="relayllm-sync")
        self.sync_thread.start()

    def sync_job(self, ids: list[int], text: str) -> None:
        try:
            session = self.open_session()
            session.sync(**self.context_kwargs(ids, text), deadline_s=self.d.deadline_s)
        except Exception:  # a failed sync only means a colder cache at the next call
            pass

    def wait_for_sync(self) -> None:
        """The session is used by one thread at a time: a call waits for a sync in flight
        (bounded by the sync's own deadline)."""
        if self.sync_thread is not None:
            self.sync_thread.join(self.d.deadline_s + 1.0)

    def end_session(self) -> None:
        session, sync = self.session, self.sync_thread
        if session is None and sync is None:
            return

        def end() -> None:  # in the background: a dead cloud must not delay the answer
            if sync is not None:
                sync.join(self.d.deadline_s + 1.0)
            target = self.session
            if target is not None:
                try:
                    target.end()
                except Exception:
                    pass

        threading.Thread(target=end, daemon=True, name="relayllm-end-session").start()

    def call(self, requested: int, trigger: str):
        """Asks the LLM for up to `requested` tokens and splices them into the SLM's
        context. A generator of events; returns (tokens spliced, the text ended)."""
        limits = self.limits
        n = min(requested, limits.max_llm_tokens - self.llm_tokens,
                limits.max_total_tokens - self.slm_tokens - self.llm_tokens, self.room() - 1)
        if n <= 0 or self.calls >= limits.max_calls:
            return 0, False
        if self.d.cloud is None:
            self.degrade("offline: no cloud configured")
            return 0, False
        self.calls += 1
        yield CallStarted(n, trigger)
        started = time.perf_counter()
        ids: list[int] = []
        texts: list[str] = []
        error = usage = None
        ended = False
        try:
            self.wait_for_sync()
            session = self.open_session()
            stream = session.help(**self.context_kwargs(self.cloud_ids, "".join(self.cloud_text)),
                                  max_tokens=n, temperature=self.d.sampling.temperature,
                                  top_p=self.d.sampling.top_p, top_k=self.d.sampling.top_k,
                                  seed=self.d.sampling.seed, deadline_s=self.d.deadline_s)
            for piece in stream:
                if self.token_mode:
                    token = int(piece.token_id)
                    if self.is_end(token):
                        ended = True
                        continue
                    ids.append(token)
                    text = self.utf8.decode(self.d.token_bytes(token))
                else:
                    text = piece.text
                if text:
                    texts.append(text)
                    yield self.emit(text, "llm")
            done = getattr(session, "last_done", None)
            if done is not None:
                usage = done.usage
                reason = _finish_name(done.finish_reason)
                if reason == "eos":
                    ended = True
                elif reason in ("deadline", "cancelled"):
                    error = f"{reason}: the cloud stopped the call early"
        except Exception as exc:  # offline first: any failure of the call, the SLM goes on
            reason, detail = getattr(exc, "reason", None), str(exc)
            error = detail if reason and detail.startswith(reason) else f"{reason or type(exc).__name__}: {detail}"
        if not self.token_mode:
            ids = self.d.tokenize("".join(texts), add_bos=False) if texts else []
        ids = ids[: max(0, self.room() - 1)]
        append_tokens(self.llm, ids)
        self.llm_tokens += len(ids)
        if self.tracking:
            self.cloud_ids.extend(ids)
            self.cloud_text.extend(texts)
        if usage is not None:
            self.prefilled += int(usage.prefilled_tokens)
            self.reused += int(usage.reused_tokens)
        if error is not None:
            self.degrade(f"call {self.calls}: {error}")
        yield CallFinished(n, len(ids), time.perf_counter() - started, error is None, error, usage)
        return len(ids), ended

    def is_end(self, token: int) -> bool:
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    # -- the decode loop ---------------------------------------------------------------------
    def events(self) -> Iterator[Event]:
        import llama_cpp

        started = time.perf_counter()
        d, llm, limits = self.d, self.llm, self.limits
        prompt_text = d.prompt_text(self.prompt)
        prompt_ids = d.tokenize(prompt_text, add_bos=True)
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        if len(prompt_ids) >= llm.n_ctx():
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the SLM's context holds {llm.n_ctx()}")
        clean_prompt = remove_commands(prompt_text)
        if self.tracking:
            self.cloud_text.append(clean_prompt)
            self.cloud_ids = prompt_ids[:] if clean_prompt == prompt_text else d.tokenize(clean_prompt, add_bos=True)
        self.prefill(prompt_ids)

        vocab = llm._model.vocab
        ctx = llm._ctx.ctx
        is_eog = llama_cpp.llama_vocab_is_eog
        sample = llama_cpp.llama_sampler_sample
        sampler = _make_sampler(d.sampling)
        chain = sampler.sampler
        router = d.router
        n_vocab = llm.n_vocab()
        token_bytes = d.token_bytes
        decode = self.utf8.decode
        feed = self.detector.feed
        tracking = self.tracking
        sync = tracking and d.sync_every_tokens > 0
        finish = "length"
        try:
            # A prompt that ends with a command asks for help before the SLM writes.
            command = command_at_end(prompt_text)
            ended = False
            if command is not None:
                _, ended = yield from self.call(command.tokens, "command")
                if ended:
                    finish = "eos"
            while not ended:
                if self.slm_tokens + self.llm_tokens >= limits.max_total_tokens:
                    finish = "length"
                    break
                if llm.n_tokens >= llm.n_ctx():
                    finish = "context"
                    break
                token = sample(chain, ctx, -1)
                if router is not None:
                    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(n_vocab,))
                    wanted = int(router.decide(TokenStep(logits, token, self.slm_tokens + self.llm_tokens,
                                                         self.text_so_far())))
                    if wanted > 0:
                        yield from self.release_held()
                        spliced, ended = yield from self.call(wanted, "router")
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
                llm.eval([token])
                self.slm_tokens += 1
                if tracking:
                    self.track_slm_token(token, segments)
                    if sync:
                        self.maybe_sync()
                if command is not None:
                    yield from self.release_held()
                    _, ended = yield from self.call(command.tokens, "command")
                    if ended:
                        finish = "eos"
                        break
            tail = self.detector.flush() + self.utf8.decode(b"", final=True)
            if tail:
                yield self.emit(tail, "slm")
        finally:
            if tracking:
                self.end_session()
        yield self.result(finish, started)


_FINISH_NAMES = {1: "length", 2: "eos", 3: "cancelled", 4: "deadline"}


def _finish_name(value) -> str:
    return _FINISH_NAMES.get(int(value), "unspecified")

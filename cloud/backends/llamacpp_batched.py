"""The batched llama.cpp backend ("llama.cpp-batched", the default for a GGUF): one model, one
llama.cpp context, every session a sequence with its own KV stream, and every session that
has a token to decode decoded in the same forward pass.

A session owns a sequence id (`Session.state`); its KV cells hold exactly Session.kv_tokens,
so a later call still evaluates only its delta (the prefill step of backends/base.py). Calls
do not touch llama.cpp themselves. A Help call hands the BatchEngine one `_Generation`: its
delta, its sampler, how many tokens it may write and its callbacks (emit, should_stop). The
generation stays in the engine until it ends, so the engine's one thread knows every session
that decodes and forms each step without waiting for anyone:

1. applies truncations (llama_memory_seq_rm) of the sessions in the step;
2. fills one llama_batch: the next token of every decoding session first, in increasing
   sequence id, then prefill tokens oldest call first, at most `prefill_chunk` (32) of them
   while any session is decoding (all of n_batch when none is), so a long prompt is spread
   over steps that each still carry every decode token; with a KV stream per sequence, the
   prompt of one sequence a step (llama.cpp would give each prompt its own pass anyway: a
   step of one decoding session and 7 short prompts was 6 passes), so a step is at most two:
   the decode run and the prompt;
3. runs llama_decode once. With one KV stream per sequence (the default) llama.cpp keeps a
   run of consecutive, increasing sequence ids in one forward pass and starts a new pass at
   each gap, so sessions take the lowest free id and the batch is sorted by id: the sessions
   in use are one run. Attention then reads each sequence's own cells. With one unified KV
   stream for all sequences (kv_unified=True) any order is one pass, but every token's
   attention runs over every session's cells (masked): at 64 sessions of ~100 tokens that
   is most of a step for a small model (SmolLM2 at 64 sequences: llama.cpp's own loop 110
   tok/s unified, 278 with streams; `python -m relayllm.training.bench.engine_alone`);
4. samples the next token of each session whose step is complete, with its own sampler
   chain, from its row of the batch's logits, and hands it on in the same thread: should_stop,
   end of text, emit (the servicer's emit only queues a reply for the event loop), and the
   token becomes that session's input of the next step. A generation that ends wakes its call.

Before, each token went back to the call's own thread and the next step waited (a short
gather window) for the calls to hand their tokens in again: two thread switches per token
and per session, cohorts that missed the window, and Python work competing with llama.cpp's
threads for the cores (0.61 of llama.cpp's own decode at one session, 0.68 at 16, SmolLM2 on
2 cores; docs/cloud.md has today's figures).

Logits do not outlive a step (the next batch overwrites them), so a session's last token is
evaluated again when a call continues a session without a delta (after a Sync: one token).
Threads: the physical cores by default (llama.cpp's threads spin; one per logical core, or
several engines side by side, only contend). Not here: which sessions stay cached
(cloud/sessions.py).
"""

from __future__ import annotations

import heapq
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from relayllm.cloud.backends.base import FINISH_EOS, FINISH_LENGTH, Backend, SamplingParams, Usage
from relayllm.cloud.backends.llamacpp import GgufTokenizer, LlamaModelFile, physical_cores
from relayllm.cloud.sessions import Session, SessionCache

PREFILL_CHUNK = 32  # step 2 of the module docstring: prefill tokens per step while sessions decode
#                     (on a CPU a prompt token costs about what a decode token does: 32 of them
#                     make a step of one decoding session ~30x longer, of 64 sessions ~1.5x)
PASS_MARKER = b"attn_norm-0"  # a graph node computed once per forward pass (llama, qwen2 graphs)


class _Step:
    """Evaluate `tokens` at `pos` on sequence `seq` (after dropping its cells from `keep` on),
    then sample one token with `sampler` (None: evaluate only)."""

    def __init__(self, seq: int, tokens: list[int], pos: int, keep: int | None, sampler):
        self.seq, self.tokens, self.pos, self.keep, self.sampler = seq, list(tokens), pos, keep, sampler
        self.token: int | None = None
        self.evaluated: list[int] = []  # tokens now in the sequence's KV cells, in order
        self.error: BaseException | None = None
        self.done = threading.Event()

    def advance(self, token: int | None) -> bool:
        """The step's tokens are evaluated (and `token` sampled): True when there is more to do."""
        self.token = token
        return False


class _Generation(_Step):
    """A Help call's decode loop, run by the engine: the delta, then one token per step until
    `should_stop` says so, the model ends its text, or `max_new_tokens` are written. Each
    written token is emitted and then evaluated as the input of the next step, except the
    last: the call ends as soon as it is sampled, and the session's next call evaluates it
    with its delta (the KV holds a prefix of the session, which the next call's reuse
    handles). That saves a step per call (1 in 65 of a 64-token call) and a step of latency.
    A token that is not written (a stop, the end of text) is not evaluated either."""

    def __init__(self, seq, tokens, pos, keep, sampler, *, max_new_tokens: int, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None], is_eos: Callable[[int], bool]):
        super().__init__(seq, tokens, pos, keep, sampler)
        self.max_new_tokens, self.should_stop, self.emit, self.is_eos = max_new_tokens, should_stop, emit, is_eos
        self.generated: list[int] = []
        self.finish = FINISH_LENGTH
        self.first_token_at: float | None = None  # perf_counter when the delta was evaluated

    def advance(self, token: int | None) -> bool:
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        stop = self.should_stop()
        if stop:
            self.finish = stop
            return False
        if self.is_eos(token):
            self.finish = FINISH_EOS
            return False
        self.emit(token)
        self.generated.append(token)
        self.tokens = [token]  # not evaluated (not in `evaluated`) when the call ends here
        return len(self.generated) < self.max_new_tokens


@dataclass(frozen=True)
class StepRecord:
    """What one engine step held and cost (BatchEngine.history)."""

    decode_seqs: tuple  # sequences that decoded one token in this step
    prefill_tokens: int  # prompt tokens evaluated in this step, all sessions
    prefill_seqs: tuple  # sequences whose prompt was (partly) evaluated
    seconds: float  # llama_decode and sampling
    passes: int | None  # forward passes llama.cpp ran for it (count_passes), else None
    ended_at: float = 0.0  # time.perf_counter() when it ended (CLOCK_MONOTONIC: one clock per machine)


class BatchEngine:
    """The one thread that owns the llama.cpp context (see the module docstring).

    count_passes: count llama.cpp's forward passes (micro-batches) with its graph eval
    callback (`passes`, and per step in `history`); it calls into Python for every graph node,
    a millisecond or more per pass, so it is for tests and probes, not for serving."""

    def __init__(self, file: LlamaModelFile, *, n_seq: int, n_ctx_per_seq: int, n_batch: int, n_threads: int,
                 prefill_chunk: int = PREFILL_CHUNK, kv_unified: bool = False, count_passes: bool = False,
                 history: int = 4096):
        if prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be >= 1, got {prefill_chunk!r}")
        self.file = file
        self.n_batch, self.prefill_chunk = n_batch, prefill_chunk
        self.n_threads, self.kv_unified = n_threads, kv_unified
        self.passes = 0
        self._callback = self._pass_counter() if count_passes else None
        self.ctx = file.context(n_ctx=n_ctx_per_seq * n_seq, n_batch=n_batch, n_threads=n_threads, n_seq_max=n_seq,
                                kv_unified=kv_unified, eval_callback=self._callback)
        self.batch = file.internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=True)
        self._pending: deque[_Step] = deque()  # oldest first; a generation stays until it ends
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # llama_decode calls
        self.decode_steps = 0  # those that carried a decode token
        self.batched_tokens = 0  # tokens they evaluated
        self.decode_tokens = self.prefill_tokens = 0
        self.step_s = self.prefill_step_s = 0.0  # seconds in all steps; in those that carried prefill
        self.prefill_only_s = 0.0  # seconds in steps that carried no decode token
        self.history: deque[StepRecord] = deque(maxlen=history)
        self._thread = threading.Thread(target=self._loop, name="llama-batch", daemon=True)
        self._thread.start()

    def _pass_counter(self):
        from llama_cpp import _ggml

        get_name = _ggml.libggml.ggml_get_name
        get_name.argtypes, get_name.restype = [self.file.llama_cpp.ctypes.c_void_p], self.file.llama_cpp.ctypes.c_char_p

        @self.file.llama_cpp.ggml_backend_sched_eval_callback
        def on_node(tensor, ask, user_data):
            if ask and get_name(tensor) == PASS_MARKER:
                self.passes += 1
            return False  # never ask for data: the graph is computed in one go

        return on_node

    # -- what calls do -----------------------------------------------------------------------
    def run(self, step: _Step) -> int | None:
        """Queue a step (or a generation) and wait until it is done; returns the last sampled
        token (None when not sampling)."""
        if not step.tokens:
            raise ValueError("a step evaluates at least one token")
        with self._cond:
            if self._closed:
                raise RuntimeError("the batch engine is closed")
            self._pending.append(step)
            self._cond.notify()
        step.done.wait()
        if step.error is not None:
            raise step.error
        return step.token

    # -- the engine thread -----------------------------------------------------------------
    def _take(self) -> list[tuple[_Step, int]]:
        """Step 2's choice: (step, tokens of it to evaluate now), every decode token first, then
        prefill oldest first within its budget. Partly taken steps stay queued."""
        budget = self.n_batch
        counts: dict[_Step, int] = {}  # in batch order
        decoding = [step for step in self._pending if len(step.tokens) == 1]
        if not self.kv_unified:  # one KV stream per sequence: llama.cpp keeps a run of consecutive
            decoding.sort(key=lambda step: step.seq)  # increasing ids in one pass (module docstring)
        for step in decoding:  # every decoding session: one token each
            if budget:
                counts[step] = 1
                budget -= 1
        if counts:  # sessions are decoding: a bounded chunk of prefill
            budget = min(budget, self.prefill_chunk)
        for step in self._pending:
            if not budget:
                break
            if len(step.tokens) > 1:
                counts[step] = n = min(budget, len(step.tokens))
                budget -= n
                if not self.kv_unified:  # a stream per sequence: llama.cpp gives prompts of several
                    break  # sequences a pass each (equal tokens per sequence in a pass), so one a step
        return list(counts.items())

    def _loop(self) -> None:
        llama_cpp = self.file.llama_cpp
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    failed, self._pending = list(self._pending), deque()
                    break
                taken = self._take()
            started, passes = time.perf_counter(), self.passes
            batch = self.batch.batch
            batch.n_tokens = 0
            complete: list[tuple[_Step, int]] = []  # (step, its batch row): all its tokens are in
            sampled: dict[_Step, int | None] = {}
            try:
                for step, count in taken:
                    if step.keep is not None:
                        llama_cpp.llama_memory_seq_rm(self.ctx.memory, step.seq, step.keep, -1)
                        step.keep = None
                    last = count == len(step.tokens)
                    for i in range(count):
                        j = batch.n_tokens
                        batch.token[j], batch.pos[j] = step.tokens[i], step.pos + i
                        batch.seq_id[j][0], batch.n_seq_id[j] = step.seq, 1
                        batch.logits[j] = last and i == count - 1
                        batch.n_tokens += 1
                    if last:
                        complete.append((step, batch.n_tokens - 1))
                self.ctx.decode(self.batch)
                for step, index in complete:
                    sampled[step] = step.sampler.sample(self.ctx, index) if step.sampler is not None else None
            except BaseException as err:  # noqa: BLE001 - handed to every call of this batch
                for step, _ in taken:
                    step.error = err
            seconds = time.perf_counter() - started
            self._record(taken, seconds, passes)
            ended: list[_Step] = []
            for step, count in taken:
                if step.error is not None:
                    ended.append(step)
                    continue
                step.evaluated += step.tokens[:count]
                step.pos += count
                step.tokens = step.tokens[count:]  # partly evaluated: the rest waits for the next batch
                if step in sampled:
                    try:  # the call's own callbacks (should_stop, emit), in this thread
                        if not step.advance(sampled[step]):
                            ended.append(step)
                    except BaseException as err:  # noqa: BLE001 - that call fails, the others go on
                        step.error = err
                        ended.append(step)
            if ended:
                with self._cond:
                    gone = set(ended)
                    self._pending = deque(s for s in self._pending if s not in gone)
                for step in ended:
                    step.done.set()
        for step in failed:
            step.error = RuntimeError("the batch engine closed")
            step.done.set()

    def _record(self, taken, seconds: float, passes_before: int) -> None:
        decode = tuple(s.seq for s, n in taken if len(s.tokens) == 1)
        prefill = [(s.seq, n) for s, n in taken if len(s.tokens) > 1]
        n_prefill = sum(n for _, n in prefill)
        self.steps += 1
        self.decode_steps += bool(decode)
        self.batched_tokens += len(decode) + n_prefill
        self.decode_tokens += len(decode)
        self.prefill_tokens += n_prefill
        self.step_s += seconds
        self.prefill_step_s += seconds if n_prefill else 0.0
        self.prefill_only_s += seconds if not decode else 0.0
        self.history.append(StepRecord(decode, n_prefill, tuple(q for q, _ in prefill), seconds,
                                       self.passes - passes_before if self._callback is not None else None,
                                       time.perf_counter()))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.ctx.close()


class BatchedLlamaCppBackend(GgufTokenizer, Backend):
    name = "llama.cpp-batched"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, max_sessions: int = 8, n_threads: int | None = None,
                 prefill_chunk: int = PREFILL_CHUNK, kv_unified: bool = False, count_passes: bool = False):
        self.file = LlamaModelFile(gguf_path)
        self.n_ctx = n_ctx
        self.n_vocab = self.file.n_vocab
        self.model_name = self.file.path.name
        self.fingerprint = self.file.fingerprint
        self.engine = BatchEngine(self.file, n_seq=max_sessions, n_ctx_per_seq=n_ctx, n_batch=min(512, n_ctx),
                                  n_threads=n_threads or physical_cores(), prefill_chunk=prefill_chunk, kv_unified=kv_unified, count_passes=count_passes)
        self._free_seqs = list(range(max_sessions))  # a heap: the lowest free id goes first, so the
        #                                               sessions in use keep consecutive ids (streams)
        self._lock = threading.Lock()
        self.sessions = SessionCache(max_sessions, release=self._release)

    # -- sequences ---------------------------------------------------------------------------
    def _release(self, session: Session) -> None:
        if session.state is not None:
            with self._lock:
                heapq.heappush(self._free_seqs, session.state["seq"])
            session.state = None
            session.forget_kv()

    def _open(self, session: Session) -> None:
        if session.state is None:
            with self._lock:
                seq = heapq.heappop(self._free_seqs)  # the cache never holds more sessions than sequences
            session.state = {"seq": seq, "keep": 0}  # keep=0: the last owner's cells go first
            session.forget_kv()

    def _truncate(self, session: Session, keep: int) -> None:
        pending = session.state["keep"]
        session.state["keep"] = keep if pending is None else min(pending, keep)

    def _run(self, session: Session, step: _Step) -> None:
        """Run a step (or a generation) of the session's sequence; its KV cells then hold what
        the engine evaluated."""
        try:
            self.engine.run(step)
        finally:
            session.state["keep"] = None
            session.kv_tokens = session.kv_tokens + step.evaluated

    def _evaluate(self, session: Session, tokens: list[int]) -> None:
        state = session.state
        self._run(session, _Step(state["seq"], tokens, len(session.kv_tokens), state["keep"], None))
        session.logits_ready = False  # the next batch overwrites them: never at hand later

    # -- the decode loop, run by the engine ---------------------------------------------------
    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        usage = super().prefill(session, tokens)
        session.logits_ready = False
        return usage

    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        """One _Generation in the engine (module docstring); `emit` and `should_stop` are called
        from the engine's thread, between its steps."""
        started = time.perf_counter()
        session.logits_ready = False
        reused = self._reuse(session, tokens)  # at least the last token is evaluated again
        state = session.state
        job = _Generation(state["seq"], tokens[reused:], len(session.kv_tokens), state["keep"],
                          self.file.sampler(sampling, self.n_vocab), max_new_tokens=max_new_tokens,
                          should_stop=should_stop, emit=emit, is_eos=self.is_eos)
        self._run(session, job)
        first = job.first_token_at or time.perf_counter()
        usage = Usage(prefilled_tokens=len(tokens) - reused, reused_tokens=reused, prefill_s=first - started,
                      generated_tokens=len(job.generated), generate_s=time.perf_counter() - first)
        return job.finish, job.generated, usage

    def close(self) -> None:
        self.engine.close()

"""The batched llama.cpp backend: one model, one llama.cpp context, every session a sequence
of a shared KV cache, all sessions' next steps decoded together in one batch.

A session owns a sequence id (`Session.state`); its KV cells hold exactly Session.kv_tokens,
so a later call still evaluates only its delta (the prefill step of backends/base.py). Calls
do not touch llama.cpp themselves: each step of a call (its delta, or the token it just
sampled) goes to the BatchEngine, whose one thread

1. applies truncations (llama_memory_seq_rm) of the sessions in the step,
2. fills one llama_batch: every waiting decode token first, then prefill chunks, up to
   n_batch tokens, taking sessions round-robin so a long prefill never stalls the others,
3. runs llama_decode once for all of them,
4. samples the next token of each session whose step is complete, with its own sampler
   chain, from its row of the batch's logits, and wakes its call.

Logits do not outlive a step (the next batch overwrites them), so a session's last token is
evaluated again when a call continues a session without a delta (after a Sync: one token).
Not here: which sessions stay cached (cloud/sessions.py).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from typing import Callable

from relayllm.cloud.backends.base import FINISH_EOS, FINISH_LENGTH, Backend, SamplingParams, Usage, timed
from relayllm.cloud.backends.llamacpp import GgufTokenizer, LlamaModelFile
from relayllm.cloud.sessions import Session, SessionCache


class _Step:
    """Evaluate `tokens` at `pos` on sequence `seq` (after dropping its cells from `keep` on),
    then sample one token with `sampler` (None: evaluate only)."""

    def __init__(self, seq: int, tokens: list[int], pos: int, keep: int | None, sampler):
        self.seq, self.tokens, self.pos, self.keep, self.sampler = seq, list(tokens), pos, keep, sampler
        self.token: int | None = None
        self.error: BaseException | None = None
        self.done = threading.Event()


class BatchEngine:
    """The one thread that owns the llama.cpp context (see the module docstring)."""

    def __init__(self, file: LlamaModelFile, *, n_seq: int, n_ctx_per_seq: int, n_batch: int, n_threads: int):
        self.file = file
        self.n_batch = n_batch
        self.ctx = file.context(n_ctx=n_ctx_per_seq * n_seq, n_batch=n_batch, n_threads=n_threads, n_seq_max=n_seq)
        self.batch = file.internals.LlamaBatch(n_tokens=n_batch, embd=0, n_seq_max=1, verbose=True)
        self._pending: deque[_Step] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0  # llama_decode calls
        self.batched_tokens = 0  # tokens they evaluated
        self._thread = threading.Thread(target=self._loop, name="llama-batch", daemon=True)
        self._thread.start()

    def run(self, step: _Step) -> int | None:
        """Queue a step and wait for it; returns the sampled token (None when not sampling)."""
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

    def _take(self) -> list[tuple[_Step, int]]:
        """This step's batch: (step, tokens of it to evaluate now), decode tokens first, then
        prefill chunks in equal shares, within n_batch tokens. Partly taken steps stay queued."""
        budget = self.n_batch
        counts: dict[_Step, int] = {}  # in batch order
        for step in self._pending:  # 1) every decoding session: one token each
            if budget and len(step.tokens) == 1:
                counts[step] = 1
                budget -= 1
        prefills = [s for s in self._pending if len(s.tokens) > 1]
        while budget and prefills:  # 2) prefills, round-robin
            share = max(1, budget // len(prefills))
            for step in list(prefills):
                n = min(share, len(step.tokens) - counts.get(step, 0), budget)
                counts[step] = counts.get(step, 0) + n
                budget -= n
                if counts[step] == len(step.tokens):
                    prefills.remove(step)
                if not budget:
                    break
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
            batch = self.batch.batch
            batch.n_tokens = 0
            finishing: list[tuple[_Step, int]] = []
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
                        finishing.append((step, batch.n_tokens - 1))
                self.ctx.decode(self.batch)
                self.steps += 1
                self.batched_tokens += batch.n_tokens
                for step, index in finishing:
                    if step.sampler is not None:
                        step.token = step.sampler.sample(self.ctx, index)
            except BaseException as err:  # noqa: BLE001 - handed to every call of this batch
                for step, _ in taken:
                    step.error = err
                finishing = [(s, 0) for s, _ in taken]
            with self._cond:
                for step, count in taken:
                    if step.error is None and not any(s is step for s, _ in finishing):
                        step.pos += count  # partly evaluated: the rest waits for the next batch
                        step.tokens = step.tokens[count:]
                for step, _ in finishing:
                    self._pending.remove(step)
            for step, _ in finishing:
                step.done.set()
        for step in failed:
            step.error = RuntimeError("the batch engine closed")
            step.done.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        self.ctx.close()


class BatchedLlamaCppBackend(GgufTokenizer, Backend):
    name = "llama.cpp"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, max_sessions: int = 8, n_threads: int | None = None):
        self.file = LlamaModelFile(gguf_path)
        self.n_ctx = n_ctx
        self.n_vocab = self.file.n_vocab
        self.model_name = self.file.path.name
        self.fingerprint = self.file.fingerprint
        self.engine = BatchEngine(self.file, n_seq=max_sessions, n_ctx_per_seq=n_ctx, n_batch=min(512, n_ctx),
                                  n_threads=n_threads or max(1, os.cpu_count() or 1))
        self._free_seqs = list(range(max_sessions - 1, -1, -1))
        self._lock = threading.Lock()
        self.sessions = SessionCache(max_sessions, release=self._release)

    # -- sequences ---------------------------------------------------------------------------
    def _release(self, session: Session) -> None:
        if session.state is not None:
            with self._lock:
                self._free_seqs.append(session.state["seq"])
            session.state = None
            session.forget_kv()

    def _open(self, session: Session) -> None:
        if session.state is None:
            with self._lock:
                seq = self._free_seqs.pop()  # the cache never holds more sessions than sequences
            session.state = {"seq": seq, "keep": 0}  # keep=0: the last owner's cells go first
            session.forget_kv()

    def _truncate(self, session: Session, keep: int) -> None:
        pending = session.state["keep"]
        session.state["keep"] = keep if pending is None else min(pending, keep)

    def _step(self, session: Session, tokens: list[int], sampler) -> int | None:
        state = session.state
        step = _Step(state["seq"], tokens, len(session.kv_tokens), state["keep"], sampler)
        token = self.engine.run(step)
        state["keep"] = None
        session.kv_tokens = session.kv_tokens + list(tokens)
        return token

    def _evaluate(self, session: Session, tokens: list[int]) -> None:
        self._step(session, tokens, None)
        session.logits_ready = False  # the next batch overwrites them: never at hand later

    # -- the decode loop, one engine step per token -----------------------------------------
    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        usage = super().prefill(session, tokens)
        session.logits_ready = False
        return usage

    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        elapsed = timed()
        session.logits_ready = False
        reused = self._reuse(session, tokens)  # at least the last token is evaluated again
        sampler = self.file.sampler(sampling, self.n_vocab)
        token = self._step(session, tokens[reused:], sampler)  # the delta, then the first new token
        usage = Usage(prefilled_tokens=len(tokens) - reused, reused_tokens=reused, prefill_s=elapsed())
        elapsed = timed()
        generated: list[int] = []
        finish = FINISH_LENGTH
        while True:
            stop = should_stop()
            if stop:
                finish = stop
                break
            if self.is_eos(token):
                finish = FINISH_EOS
                break
            emit(token)
            generated.append(token)
            more = len(generated) < max_new_tokens
            # evaluate it at once (the KV holds the whole session), sampling the next if wanted
            token = self._step(session, [token], sampler if more else None)
            if not more:
                break
        usage.generated_tokens = len(generated)
        usage.generate_s = elapsed()
        return finish, generated, usage

    def close(self) -> None:
        self.engine.close()

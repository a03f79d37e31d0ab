"""The llama.cpp backend: a GGUF model on the CPU, one llama.cpp context per session.

Each cached session owns a `llama_cpp.Llama` context whose KV cache holds that session's
tokens; a later call truncates the KV to the longest common prefix and evaluates only the
rest. Contexts are made lazily (up to max_sessions) and recycled when a session is evicted.
The weights are memory-mapped, so extra contexts cost their KV cache and compute buffers,
not another copy of the model.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from relayllm.cloud.backend import (
    FINISH_EOS,
    FINISH_LENGTH,
    Backend,
    SamplingParams,
    Session,
    SessionCache,
    Usage,
    common_prefix,
    timed,
)
from relayllm.protos.fingerprint import token_piece, tokenizer_fingerprint


class LlamaCppBackend(Backend):
    name = "llama.cpp"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, max_sessions: int = 8, n_threads: int | None = None):
        import llama_cpp

        path = Path(gguf_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {path}")
        self._llama_cpp = llama_cpp
        self._path = str(path)
        self._params = dict(model_path=self._path, n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                            n_threads=n_threads or max(1, os.cpu_count() or 1))
        self._free: list = []  # contexts of evicted sessions, ready for reuse
        self._free_lock = threading.Lock()
        first = self._new_context()
        self._free.append(first)
        self.n_ctx = n_ctx
        self.n_vocab = first.n_vocab()
        self.model_name = path.name
        self.fingerprint = tokenizer_fingerprint(first)
        self._vocab = first._model.vocab
        self._tokenizer = first  # tokenize/detokenize are read-only on the vocab: safe from any thread
        self._pieces: dict[int, bytes] = {}
        self.sessions = SessionCache(max_sessions, release=self._release)

    def _new_context(self):
        from relayllm.edge.models import quiet_llama

        return quiet_llama(**self._params)  # sessions open from many threads: loads take turns

    def _release(self, session: Session) -> None:
        if session.state is not None:
            with self._free_lock:
                self._free.append(session.state)
            session.state = None
            session.kv_tokens = []
            session.logits_ready = False

    def _context_for(self, session: Session):
        if session.state is None:
            with self._free_lock:
                llama = self._free.pop() if self._free else None
            session.state = llama or self._new_context()
            session.state.reset()
            session.kv_tokens = []
            session.logits_ready = False
        return session.state

    # -- tokenizer -------------------------------------------------------------------
    def tokenize(self, text: bytes) -> list[int]:
        return self._tokenizer.tokenize(text, add_bos=True, special=True)

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = token_piece(self._vocab, token_id)
        return piece

    def is_eos(self, token_id: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(self._vocab, token_id))

    # -- KV reuse ----------------------------------------------------------------------
    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        """Evaluate only the part of `tokens` the session's KV does not hold already."""
        llama = self._context_for(session)
        elapsed = timed()
        reused = common_prefix(session.kv_tokens, tokens)
        if reused == len(tokens) and not (session.logits_ready and reused == len(session.kv_tokens)):
            reused -= 1  # the next token needs the last position's logits: evaluate it again
        reused = max(reused, 0)
        llama.n_tokens = reused  # Llama.eval drops the KV from n_tokens on
        session.kv_tokens = session.kv_tokens[:reused]
        delta = tokens[reused:]
        if delta:
            session.logits_ready = False
            llama.eval(delta)
            session.kv_tokens = list(tokens)
            session.logits_ready = True
        return Usage(prefilled_tokens=len(delta), reused_tokens=reused, prefill_s=elapsed())

    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        usage = self.prefill(session, tokens)
        llama = session.state
        elapsed = timed()
        llama.set_seed(sampling.seed or int.from_bytes(os.urandom(4), "little"))
        top_k = sampling.top_k if 0 < sampling.top_k < self.n_vocab else 0
        sampler = llama._init_sampler(temp=sampling.temperature, top_p=sampling.top_p or 1.0, top_k=top_k,
                                      min_p=0.0)
        generated: list[int] = []
        finish = FINISH_LENGTH
        for _ in range(max_new_tokens):
            stop = should_stop()
            if stop:
                finish = stop
                break
            token = sampler.sample(llama._ctx, -1)
            if self.is_eos(token):
                finish = FINISH_EOS
                break
            emit(token)
            generated.append(token)
            # Evaluate it at once, so the KV always holds the whole session (the next call
            # then prefills only its delta).
            session.logits_ready = False
            llama.eval([token])
            session.kv_tokens.append(token)
            session.logits_ready = True
        usage.generated_tokens = len(generated)
        usage.generate_s = elapsed()
        return finish, generated, usage

    def close(self) -> None:
        with self._free_lock:
            contexts, self._free = self._free, []
        for llama in contexts:
            llama.close()

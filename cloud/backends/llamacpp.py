"""The llama.cpp backend with a context per session ("llama.cpp-contexts"), and the GGUF model
file every llama.cpp backend (and the gateway's tokenizer) loads through.

The model's weights are loaded once (llama-cpp-python's low-level API: LlamaModel); each
cached session owns a llama.cpp context whose KV cache holds that session's tokens. A later
call truncates the KV to the longest common prefix and evaluates only the rest (the prefill
step and decode loop of backends/base.py). Contexts are made lazily (up to max_sessions) and
recycled when a session is evicted.

No stdout/stderr swap: llama.cpp's log lines go to Python logging (backends/llama_logs.py).
Not here: batching sessions into one forward pass (backends/llamacpp_batched.py, the
default "llama.cpp" backend). This one keeps each session's last logits, so a Help right
after a Sync evaluates nothing. Nothing serializes its sessions: each call decodes in its own
context at once, with n_threads threads each, so k sessions at once run k x n_threads threads
(on few cores they contend; the batched backend is the one for many sessions).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

from relayllm.cloud.backends.base import Backend, SamplingParams
from relayllm.cloud.backends.llama_logs import route_llama_logs
from relayllm.cloud.sessions import Session, SessionCache
from relayllm.protos.fingerprint import fingerprint_of_pieces, token_piece


def physical_cores() -> int:
    """Physical cores this process may run on (SMT siblings counted once): llama.cpp's compute
    threads spin on barriers, so a thread per logical core only adds contention."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(), (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


class LlamaModelFile:
    """One GGUF loaded once: weights, vocabulary, tokenizer, fingerprint (shared by contexts)."""

    def __init__(self, gguf_path, *, vocab_only: bool = False):
        import llama_cpp
        from llama_cpp import _internals

        path = Path(gguf_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF model not found: {path}")
        route_llama_logs()
        self.llama_cpp, self.internals = llama_cpp, _internals
        self.path = path
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = vocab_only  # the tokenizer alone (the gateway's)
        self.model = _internals.LlamaModel(path_model=str(path), params=params,
                                           verbose=True)  # verbose: no stdout/stderr swap (logs are routed)
        self.vocab = self.model.vocab
        self.n_vocab = self.model.n_vocab()
        self._pieces: dict[int, bytes] = {}
        self.fingerprint = fingerprint_of_pieces(token_piece(self.vocab, i) for i in range(self.n_vocab))

    def context(self, *, n_ctx: int, n_batch: int, n_threads: int, n_seq_max: int = 1, kv_unified: bool = False,
                eval_callback=None):
        """A llama.cpp context. kv_unified: one KV stream for all sequences, so a batch of many
        sequences is one forward pass (without it llama.cpp splits it by sequence); eval_callback:
        a llama_cpp.ggml_backend_sched_eval_callback called for every graph node (kept alive by
        the caller)."""
        params = self.llama_cpp.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = n_threads
        params.n_seq_max = n_seq_max
        params.kv_unified = kv_unified
        if eval_callback is not None:
            params.cb_eval = eval_callback
        return self.internals.LlamaContext(model=self.model, params=params, verbose=True)

    def tokenize(self, text: bytes) -> list[int]:
        return self.model.tokenize(text, add_bos=True, special=True)  # read-only on the vocab: any thread

    def token_bytes(self, token_id: int) -> bytes:
        piece = self._pieces.get(token_id)
        if piece is None:
            piece = self._pieces[token_id] = token_piece(self.vocab, token_id)
        return piece

    def is_eos(self, token_id: int) -> bool:
        return bool(self.llama_cpp.llama_vocab_is_eog(self.vocab, token_id))

    def bos(self) -> int | None:
        """The BOS token id when the model adds one to a prompt, else None."""
        if not self.llama_cpp.llama_vocab_get_add_bos(self.vocab):
            return None
        return self.llama_cpp.llama_vocab_bos(self.vocab)

    def sampler(self, sampling: SamplingParams, n_vocab: int):
        """A llama.cpp sampler chain for these settings (greedy at temperature 0)."""
        chain = self.internals.LlamaSampler()
        if sampling.temperature == 0.0:
            chain.add_greedy()
            return chain
        if 0 < sampling.top_k < n_vocab:
            chain.add_top_k(sampling.top_k)
        chain.add_top_p(sampling.top_p or 1.0, 1)
        chain.add_temp(sampling.temperature)
        chain.add_dist(sampling.seed or int.from_bytes(os.urandom(4), "little"))
        return chain

    def close(self) -> None:
        self.model.close()


class GgufTokenizer:
    """tokenize / token_bytes / is_eos of a Backend, from its LlamaModelFile (`self.file`)."""

    file: LlamaModelFile

    def tokenize(self, text: bytes) -> list[int]:
        return self.file.tokenize(text)

    def token_bytes(self, token_id: int) -> bytes:
        return self.file.token_bytes(token_id)

    def is_eos(self, token_id: int) -> bool:
        return self.file.is_eos(token_id)


class _Slot:
    """One llama.cpp context and its batch buffer: the KV of one session at a time."""

    def __init__(self, ctx, batch):
        self.ctx, self.batch = ctx, batch


class LlamaCppBackend(GgufTokenizer, Backend):
    name = "llama.cpp-contexts"

    def __init__(self, gguf_path, *, n_ctx: int = 2048, max_sessions: int = 8, n_threads: int | None = None):
        self.file = LlamaModelFile(gguf_path)
        self.n_ctx = n_ctx
        self._n_batch = min(n_ctx, 512)
        self._n_threads = n_threads or physical_cores()
        self.n_vocab = self.file.n_vocab
        self.model_name = self.file.path.name
        self.fingerprint = self.file.fingerprint
        self._free: list[_Slot] = [self._new_slot()]  # contexts of evicted sessions, ready for reuse
        self._free_lock = threading.Lock()
        self.sessions = SessionCache(max_sessions, release=self._release)

    def _new_slot(self) -> _Slot:
        ctx = self.file.context(n_ctx=self.n_ctx, n_batch=self._n_batch, n_threads=self._n_threads)
        return _Slot(ctx, self.file.internals.LlamaBatch(n_tokens=self._n_batch, embd=0, n_seq_max=1, verbose=True))

    def _release(self, session: Session) -> None:
        if session.state is not None:
            with self._free_lock:
                self._free.append(session.state)
            session.state = None
            session.forget_kv()

    # -- the steps of base.Backend ----------------------------------------------------------
    def _open(self, session: Session) -> None:
        if session.state is None:
            with self._free_lock:
                slot = self._free.pop() if self._free else None
            session.state = slot or self._new_slot()
            session.state.ctx.kv_cache_clear()
            session.forget_kv()

    def _truncate(self, session: Session, keep: int) -> None:
        session.state.ctx.kv_cache_seq_rm(0, keep, -1)

    def _evaluate(self, session: Session, tokens: list[int]) -> None:
        slot: _Slot = session.state
        n_past = len(session.kv_tokens)
        for i in range(0, len(tokens), self._n_batch):
            chunk = tokens[i:i + self._n_batch]
            slot.batch.set_batch(chunk, n_past=n_past + i, logits_all=False)
            slot.ctx.decode(slot.batch)

    def _sampler(self, session: Session, sampling: SamplingParams) -> Callable[[], int]:
        chain = self.file.sampler(sampling, self.n_vocab)
        ctx = session.state.ctx
        return lambda: chain.sample(ctx, -1)

    def close(self) -> None:
        with self._free_lock:
            slots, self._free = self._free, []
        for slot in slots:
            slot.ctx.close()

"""The transformers backend: any Hugging Face causal LM (CPU or GPU) with per-session KV.

Each session keeps a DynamicCache (past_key_values) and the logits of its last position;
a later call crops the cache to the longest common token prefix and runs the model on the
rest only (the prefill step and decode loop of backends/base.py). Forward passes are
serialized by one lock (one model, many sessions). Not here: continuous batching.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Callable

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from relayllm.cloud.backends.base import Backend, SamplingParams
from relayllm.cloud.sessions import Session, SessionCache
from relayllm.protos.fingerprint import fingerprint_of_pieces

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytes_to_unicode() -> dict[int, str]:
    """The byte <-> printable character table of byte-level BPE (GPT-2 style) vocabularies."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


class _Kv:
    """A session's KV cache and the logits that follow its last token."""

    def __init__(self):
        self.cache = DynamicCache()
        self.logits: torch.Tensor | None = None


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, model_dir_or_path, *, gguf_file: str | None = None, device: str = "cpu",
                 max_sessions: int = 8, dtype=None, n_ctx: int = 2048):
        path = Path(model_dir_or_path)
        if not path.exists():
            raise FileNotFoundError(f"model not found: {path}")
        if path.is_file():  # a GGUF file: transformers reads it from its folder
            path, gguf_file = path.parent, path.name
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs).to(device).eval()
        self.device = torch.device(device)
        self.model_name = gguf_file or path.name
        self.n_vocab = int(self.model.config.vocab_size)
        limit = getattr(self.model.config, "max_position_embeddings", None) or n_ctx
        self.n_ctx = min(n_ctx, int(limit))
        eos = self.model.generation_config.eos_token_id if self.model.generation_config else None
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self._eos = {int(e) for e in [*eos, self.tokenizer.eos_token_id] if e is not None}
        self._pieces = self._vocab_pieces()
        self.fingerprint = fingerprint_of_pieces(self._pieces) if self._pieces is not None else ""
        self._lock = threading.Lock()
        self.sessions = SessionCache(max_sessions, release=self._release)

    def _vocab_pieces(self) -> list[bytes] | None:
        """Every token's bytes in id order, as llama.cpp renders them (None if unknown)."""
        tokens = self.tokenizer.convert_ids_to_tokens(list(range(len(self.tokenizer))))
        special = set(self.tokenizer.all_special_tokens) | set(
            t.content for t in getattr(self.tokenizer, "added_tokens_decoder", {}).values())
        vocab = self.tokenizer.get_vocab()
        if "Ġ" in vocab or "Ċ" in vocab:  # byte-level BPE
            decoder = {c: b for b, c in _bytes_to_unicode().items()}
            pieces = []
            for token in tokens:
                if token is None:
                    pieces.append(b"")
                elif token in special or any(c not in decoder for c in token):
                    pieces.append(token.encode("utf-8"))
                else:
                    pieces.append(bytes(decoder[c] for c in token))
            return pieces
        if "▁" in "".join(t for t in tokens[:5000] if t):  # SentencePiece
            pieces = []
            for token in tokens:
                match = _BYTE_TOKEN.fullmatch(token or "")
                if match:
                    pieces.append(bytes([int(match.group(1), 16)]))
                else:
                    pieces.append((token or "").replace("▁", " ").encode("utf-8"))
            return pieces
        return None  # unknown scheme: token mode refused, text mode still works

    def _release(self, session: Session) -> None:
        session.state = None
        session.forget_kv()

    # -- tokenizer -------------------------------------------------------------------
    def tokenize(self, text: bytes) -> list[int]:
        return list(self.tokenizer(text.decode("utf-8"), add_special_tokens=True)["input_ids"])

    def token_bytes(self, token_id: int) -> bytes:
        if self._pieces is not None and token_id < len(self._pieces):
            return self._pieces[token_id]
        return self.tokenizer.decode([token_id]).encode("utf-8")

    def is_eos(self, token_id: int) -> bool:
        return token_id in self._eos

    # -- the steps of base.Backend ----------------------------------------------------------
    def _open(self, session: Session) -> None:
        if session.state is None:
            session.state = _Kv()
            session.forget_kv()

    def _truncate(self, session: Session, keep: int) -> None:
        session.state.cache.crop(keep)

    @torch.inference_mode()
    def _evaluate(self, session: Session, tokens: list[int]) -> None:
        kv: _Kv = session.state
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        with self._lock:
            out = self.model(input_ids=ids, past_key_values=kv.cache, use_cache=True)
        kv.cache = out.past_key_values
        kv.logits = out.logits[0, -1].float()

    def _sampler(self, session: Session, sampling: SamplingParams) -> Callable[[], int]:
        kv: _Kv = session.state
        if sampling.temperature == 0.0:
            return lambda: int(torch.argmax(kv.logits))
        generator = torch.Generator(device="cpu")
        if sampling.seed:
            generator.manual_seed(sampling.seed)
        else:
            generator.seed()
        return lambda: _sample(kv.logits.cpu(), sampling, generator)


def _sample(logits: torch.Tensor, sampling: SamplingParams, generator: torch.Generator) -> int:
    """Temperature, top-k and top-p sampling of one token."""
    logits = logits / sampling.temperature
    if 0 < sampling.top_k < logits.numel():
        kth = torch.topk(logits, sampling.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if sampling.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, 0) - sorted_probs < sampling.top_p  # always keeps the top one
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))

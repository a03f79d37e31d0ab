"""Tokenizer fingerprint: a short id that says two models share one tokenizer.

Edge and cloud compare it before speaking in token ids (token mode of the Help RPC).
sha256 over the vocabulary: for every token id in order, its byte length (uint32 LE) and
its bytes as llama.cpp renders them (special tokens as their text). The transformers
backend computes the same string from a Hugging Face tokenizer.

A relay SLM is its base model with the two command tokens `<call>` `</call>` appended at the
end of the vocabulary (training/relay/checkpoints.py). They never reach the cloud (what the
LLM is shown has every command removed: protos/grammar.py), so the fingerprint leaves such a
trailing pair out: a relay SLM built on the cloud LLM's tokenizer still speaks token ids
with it, as its base did.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
from typing import Iterable

from relayllm.protos.grammar import COMMAND_TOKENS


COMMAND_PIECES = [t.encode() for t in COMMAND_TOKENS]


def fingerprint_of_pieces(pieces: Iterable[bytes]) -> str:
    pieces = list(pieces)
    if pieces[-2:] == COMMAND_PIECES:
        pieces = pieces[:-2]
    digest = hashlib.sha256()
    count = 0
    for piece in pieces:
        digest.update(struct.pack("<I", len(piece)))
        digest.update(piece)
        count += 1
    digest.update(struct.pack("<I", count))
    return digest.hexdigest()


def token_piece(vocab, token_id: int) -> bytes:
    """The bytes of one token (special tokens rendered as their text)."""
    import llama_cpp

    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, token_id, buf, size, 0, True)
        if n >= 0:
            return buf.raw[:n]
        size = -n


def tokenizer_fingerprint(llama) -> str:
    """Fingerprint of a llama_cpp.Llama's tokenizer (cached on the object)."""
    cached = getattr(llama, "_relayllm_fingerprint", None)
    if cached:
        return cached
    vocab = llama._model.vocab
    value = fingerprint_of_pieces(token_piece(vocab, i) for i in range(llama.n_vocab()))
    try:
        llama._relayllm_fingerprint = value
    except AttributeError:
        pass
    return value

"""The SLM's vocabulary seen from the decoder: token ids to bytes, end-of-generation, tokenizing.

`Vocab(llama)` wraps a llama_cpp.Llama. Text that a person or the cloud wrote is tokenized
with `special=False`: a pasted `<|im_start|>` stays text and never becomes a control token.
Only the chat template's own markers are tokenized as special tokens (edge/chat.py).
"""

from __future__ import annotations

import ctypes


class Vocab:
    def __init__(self, llama):
        self.llama = llama
        self._pieces: dict[int, bytes] = {}  # token id -> its bytes (special tokens as b"")

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token writes (cached; control tokens write nothing)."""
        piece = self._pieces.get(token)
        if piece is None:
            import llama_cpp

            vocab = self.llama._model.vocab
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

    def is_end(self, token: int) -> bool:
        """True for end-of-generation tokens (EOS, <|im_end|>, <end_of_turn>...)."""
        import llama_cpp

        return bool(llama_cpp.llama_vocab_is_eog(self.llama._model.vocab, token))

    def text(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Tokens of text written by a person or the cloud: never control tokens."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False) if text else []

    def markup(self, text: str, *, add_bos: bool = False) -> list[int]:
        """Tokens of text the project itself wrote (a chat template's markers, a relay
        command): special tokens are parsed."""
        return self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=True) if text else []

    def special_text(self, token: int) -> str:
        """The text of a special token (BOS, EOS), '' for none."""
        return self.llama.detokenize([token], special=True).decode("utf-8", "replace") if token >= 0 else ""

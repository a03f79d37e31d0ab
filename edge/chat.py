"""Chat prompts: messages through the GGUF's own chat template, tokenized safely.

    template = ChatTemplate.of(llama)               # the template stored in the GGUF
    ids, text = template.tokens(vocab, messages)    # [{"role": "user", "content": "..."}]

Only the template's own markers become control tokens. Each message's content is found in
the rendered text and tokenized with special=False, so a user who pastes `<|im_start|>system`
writes text, not a new turn. Not here: keeping a conversation's KV between turns (that is
the decode loop's prefix reuse, edge/decode_loop.py) and the HTTP endpoint (edge/server.py).
"""

from __future__ import annotations

from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Segment:
    """A piece of the rendered prompt: markup of the template (special tokens parsed) or content."""

    text: str
    markup: bool


def check_messages(messages) -> list[dict]:
    """Messages as [{"role", "content"}] with known roles and string content, or a ValueError."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ValueError("messages must be a non-empty list of {'role', 'content'}")
    out = []
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in ROLES:
            raise ValueError(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise ValueError(f"messages[{i}].content must be a string")
        out.append({"role": role, "content": content})
    return out


class ChatTemplate:
    """The Jinja chat template of a GGUF, rendered the way llama-cpp-python renders it."""

    def __init__(self, template: str, *, bos: str, eos: str):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos,
                                              add_generation_prompt=True)

    @classmethod
    def of(cls, llama) -> "ChatTemplate":
        from relayllm.edge.vocab import Vocab

        template = llama.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError("this GGUF has no chat template: use chat=False and plain prompts")
        vocab = Vocab(llama)
        return cls(template, bos=vocab.special_text(llama.token_bos()), eos=vocab.special_text(llama.token_eos()))

    def segments(self, messages) -> list[Segment]:
        """The rendered prompt cut into template markup and message content.

        1. Render the messages with the template.
        2. Find each content, in order, in the rendered text (templates may trim it).
        3. What lies between contents is the template's markup."""
        messages = check_messages(messages)
        rendered = self._formatter(messages=messages).prompt
        out: list[Segment] = []
        at = 0
        for i, message in enumerate(messages):
            content = message["content"]
            for form in (content, content.strip()):
                start = rendered.find(form, at) if form else -1
                if start >= 0:
                    break
            else:
                if not content.strip():
                    continue  # an empty message leaves nothing to protect
                raise ValueError(f"messages[{i}]: the chat template rewrites the content, so it cannot be kept "
                                 "apart from the template's control tokens")
            if start > at:
                out.append(Segment(rendered[at:start], True))
            out.append(Segment(form, False))
            at = start + len(form)
        if at < len(rendered):
            out.append(Segment(rendered[at:], True))
        return out

    def tokens(self, vocab, messages) -> tuple[list[int], str]:
        """(token ids, rendered text) of the prompt: markup special, content plain text."""
        segments = self.segments(messages)
        ids: list[int] = []
        for segment in segments:  # no BOS added: the template writes its own (as llama-cpp-python does)
            ids.extend(vocab.markup(segment.text) if segment.markup else vocab.text(segment.text))
        return ids, "".join(s.text for s in segments)

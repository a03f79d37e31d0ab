"""What the edge decoder streams to the app.

`RelayDecoder.stream(prompt)` yields, in order: `TextPiece`s (text as it is written, tagged
with its author), a `CallStarted` / `CallFinished` pair around every call to the cloud, and
one final `Result`. The concatenation of every TextPiece's text is exactly `Result.text`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

Author = Literal["slm", "llm"]


@dataclass(frozen=True, slots=True)
class TextPiece:
    """Text as it is written: by the on-device model ("slm") or the cloud ("llm")."""

    text: str
    author: Author = "slm"


@dataclass(frozen=True, slots=True)
class CallStarted:
    """The edge asks the cloud for `requested_tokens` tokens.

    `trigger`: "command" (the SLM wrote `<call>N</call>`, or the prompt ended with one)
    or "router" (the per-token router fired).
    """

    requested_tokens: int
    trigger: str = "command"


@dataclass(frozen=True, slots=True)
class CallFinished:
    """A call ended. `ok` is False when it failed (the SLM then goes on by itself);
    `received_tokens` counts the LLM tokens kept, in the SLM's tokenizer, even from a
    call that failed midway. `usage` is the cloud's usage message (prefilled / reused
    tokens, server time) when the call completed, else None."""

    requested_tokens: int
    received_tokens: int
    latency_s: float
    ok: bool
    error: str | None = None
    usage: Any = None


@dataclass(frozen=True, slots=True)
class Result:
    """The finished answer and its counters.

    - text: the whole answer (commands removed), spans: [(author, text)] in order.
    - slm_tokens / llm_tokens: tokens written by each, both counted in the SLM's tokenizer
      (the SLM's commands count as SLM tokens); llm_token_ratio = llm / (slm + llm).
    - calls: calls made to the cloud (failed ones included).
    - degraded: some help was asked for and not (fully) received; degraded_reasons says why.
    - finish_reason: "eos" (the SLM or the LLM ended the text), "length" (a token limit),
      "context" (the SLM's context is full), "cancelled" (the app stopped it).
    - prefilled_tokens / reused_tokens: the cloud's usage summed over the calls.
    - prompt_tokens / prompt_evaluated_tokens: the prompt's tokens, and how many of them
      llama.cpp evaluated (the rest were already in the KV cache: a conversation's turn two
      evaluates only its new tokens).
    - local_only: the request ran with the local-only switch: nothing left the device.
    """

    text: str
    spans: list[tuple[Author, str]]
    slm_tokens: int
    llm_tokens: int
    calls: int
    llm_token_ratio: float
    wall_s: float
    degraded: bool
    degraded_reasons: list[str] = field(default_factory=list)
    finish_reason: str = "eos"
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    prompt_tokens: int = 0
    prompt_evaluated_tokens: int = 0
    local_only: bool = False

    @property
    def total_tokens(self) -> int:
        return self.slm_tokens + self.llm_tokens


Event = Union[TextPiece, CallStarted, CallFinished, Result]

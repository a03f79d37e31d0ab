"""The Backend protocol every model engine implements, with the one prefill step and the
one decode loop that the local backends share.

A backend turns token ids into more token ids. It keeps, per session, the tokens whose KV
state it holds (Session.kv_tokens), so that a later call evaluates only what differs from
them (the delta). A local backend implements four small steps (`_open`, `_truncate`,
`_evaluate`, `_sampler`) and inherits `prefill` and `generate`; a backend that talks to
another engine (the OpenAI gateway) overrides `prefill` and `generate` instead.

Not here: what a session's context is (text or tokens, checksums, tenants) - that is the
servicer's (cloud/planning.py); which sessions stay cached - cloud/sessions.py.
Threading: `generate`/`prefill` run in worker threads, one call per session at a time.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass
from typing import Callable

from relayllm.cloud.sessions import Session, SessionCache
from relayllm.protos.delta import common_prefix

FINISH_LENGTH = "length"
FINISH_EOS = "eos"
FINISH_CANCELLED = "cancelled"
FINISH_DEADLINE = "deadline"


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = no limit
    seed: int = 0  # 0 = random


@dataclass
class Usage:
    prefilled_tokens: int = 0
    reused_tokens: int = 0
    generated_tokens: int = 0
    prefill_s: float = 0.0
    generate_s: float = 0.0
    queue_s: float = 0.0


def timed() -> Callable[[], float]:
    start = time.perf_counter()
    return lambda: time.perf_counter() - start


class Backend(abc.ABC):
    """What the servicer needs from a model engine."""

    name: str  # "llama.cpp", "transformers", "openai-gateway"
    model_name: str
    fingerprint: str  # tokenizer fingerprint ("" = token mode unsupported)
    n_vocab: int
    n_ctx: int  # most tokens a session can hold (context + generated)
    sessions: SessionCache

    # -- tokenizer ---------------------------------------------------------------------
    @abc.abstractmethod
    def tokenize(self, text: bytes) -> list[int]:
        """Token ids of a session's whole text context (with BOS when the model wants it)."""

    @abc.abstractmethod
    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one generated token adds to the text."""

    @abc.abstractmethod
    def is_eos(self, token_id: int) -> bool: ...

    # -- the steps a local backend implements --------------------------------------------
    def _open(self, session: Session) -> None:
        """Give the session KV state when it has none (session.state)."""
        raise NotImplementedError

    def _truncate(self, session: Session, keep: int) -> None:
        """Drop the session's KV past its first `keep` tokens."""
        raise NotImplementedError

    def _evaluate(self, session: Session, tokens: list[int]) -> None:
        """Run the model on `tokens` after the session's KV; the last position's logits follow."""
        raise NotImplementedError

    def _sampler(self, session: Session, sampling: SamplingParams) -> Callable[[], int]:
        """A function that samples the next token from the session's last logits."""
        raise NotImplementedError

    # -- one prefill step for every local backend ------------------------------------------
    def _reuse(self, session: Session, tokens: list[int]) -> int:
        """How many leading `tokens` the session's KV keeps (the rest is the delta to evaluate);
        drops what differs. The last token is evaluated again when its logits are not at hand."""
        self._open(session)
        reused = common_prefix(session.kv_tokens, tokens)
        if reused == len(tokens) and not (session.logits_ready and reused == len(session.kv_tokens)):
            reused -= 1  # the next token needs the last position's logits: evaluate it again
        reused = max(reused, 0)
        if reused < len(session.kv_tokens):
            self._truncate(session, reused)
            session.kv_tokens = session.kv_tokens[:reused]
            session.logits_ready = False
        return reused

    def prefill(self, session: Session, tokens: list[int]) -> Usage:
        """Make the session's KV hold exactly `tokens`, evaluating only what differs."""
        elapsed = timed()
        reused = self._reuse(session, tokens)
        delta = tokens[reused:]
        if delta:
            session.logits_ready = False
            self._evaluate(session, delta)
            session.kv_tokens = list(tokens)
            session.logits_ready = True
        return Usage(prefilled_tokens=len(delta), reused_tokens=reused, prefill_s=elapsed())

    # -- one decode loop for every local backend --------------------------------------------
    def generate(self, session: Session, tokens: list[int], *, max_new_tokens: int,
                 sampling: SamplingParams, should_stop: Callable[[], str | None],
                 emit: Callable[[int], None]) -> tuple[str, list[int], Usage]:
        """Prefill `tokens` (delta only) and write up to max_new_tokens tokens.

        emit(token_id) is called for each token as soon as it is sampled (EOS is not
        emitted). should_stop() is checked before each token and returns a finish reason
        to stop with (cancelled / deadline) or None. Returns (finish reason, generated
        tokens, usage); afterwards session.kv_tokens is a prefix of tokens + generated.
        """
        usage = self.prefill(session, tokens)
        elapsed = timed()
        sample = self._sampler(session, sampling)
        generated: list[int] = []
        finish = FINISH_LENGTH
        for _ in range(max_new_tokens):
            stop = should_stop()
            if stop:
                finish = stop
                break
            token = sample()
            if self.is_eos(token):
                finish = FINISH_EOS
                break
            emit(token)
            generated.append(token)
            # Evaluate it at once, so the KV always holds the whole session (the next call
            # then prefills only its delta).
            session.logits_ready = False
            self._evaluate(session, [token])
            session.kv_tokens.append(token)
            session.logits_ready = True
        usage.generated_tokens = len(generated)
        usage.generate_s = elapsed()
        return finish, generated, usage

    def close(self) -> None:
        pass

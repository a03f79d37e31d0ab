"""Request validation and delta planning: what a call asks for, checked before any model work.

A Help or Sync request names a session and a delta (Context: base_length, base_crc32, text or
token ids). `plan` checks every field a request carries alone (session id, mode, fingerprint,
vocabulary, sizes) and `apply` checks the delta against what the session holds (under its
lease), returning the session's whole new context; `tokens_for` turns it into token ids
within the context limit. Every refusal is a `Refused` with the gRPC status the proto
promises and a message that names the field. No model runs here; nothing is logged.
"""

from __future__ import annotations

import math
import re
import zlib
from dataclasses import dataclass

import grpc
import numpy as np

from relayllm.cloud.backends.base import Backend, SamplingParams
from relayllm.protos import relay_pb2 as pb

SESSION_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,128}")


class Refused(Exception):
    """A request the service will not serve: a gRPC status code and a readable message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refused:
    return Refused(grpc.StatusCode.INVALID_ARGUMENT, message)


def precondition(message: str) -> Refused:
    return Refused(grpc.StatusCode.FAILED_PRECONDITION, message + "; resend the whole prefix (base_length=0)")


def exhausted(message: str) -> Refused:
    return Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def token_bytes_le(ids) -> bytes:
    return np.asarray(ids, dtype="<u4").tobytes()


def context_crc(mode: str, context) -> int:
    """The CRC-32 the proto defines: UTF-8 bytes in text mode, uint32 LE ids in token mode."""
    return zlib.crc32(context if mode == "text" else token_bytes_le(context))


def check_session_id(session_id: str) -> None:
    if not SESSION_ID.fullmatch(session_id):
        raise invalid("session_id must be 1..128 characters of [A-Za-z0-9_.:-]")


@dataclass
class Plan:
    """A checked request: which session, and what its context becomes."""

    key: tuple
    mode: str
    base_length: int
    new_context: bytes | list[int]  # the delta (or the whole prefix when base_length is 0)
    create: bool


def plan(backend: Backend, max_context: int, tenant: str, session_id: str, ctx: pb.Context, *,
         extra_tokens: int) -> Plan:
    """Check what the request says on its own; the session's state is checked by `apply`."""
    check_session_id(session_id)
    key = (tenant, session_id)
    mode = "tokens" if ctx.WhichOneof("delta") == "tokens" else "text"
    if mode == "tokens":
        if not backend.fingerprint:
            raise precondition("token mode is not supported by this backend (no tokenizer fingerprint); use text")
        if ctx.tokenizer_fingerprint != backend.fingerprint:
            raise precondition("tokenizer_fingerprint does not match this service's tokenizer (see Info)")
        delta = list(ctx.tokens.ids)
        if any(i >= backend.n_vocab for i in delta):
            raise invalid(f"token ids must be below the vocabulary size {backend.n_vocab}")
        if len(delta) + extra_tokens > max_context:
            raise invalid(f"context too long: more than {max_context} tokens with max_tokens")
    else:
        delta = ctx.text.encode("utf-8")
        # Every token is at least one byte... except that llama.cpp may add BOS; a cheap
        # bound before tokenizing.
        if len(delta) > 16 * max_context:
            raise invalid(f"context too long: the limit is {max_context} tokens")
    if ctx.base_length == 0:
        return Plan(key, mode, 0, delta, create=True)
    if key not in backend.sessions:
        raise precondition("unknown or evicted session")
    return Plan(key, mode, ctx.base_length, delta, create=False)


def apply(plan_: Plan, session, base_crc: int):
    """The session's new whole context, checked against what it holds (under its lease)."""
    if plan_.base_length == 0:
        return plan_.new_context
    held = session.context
    if held is None:
        raise precondition("unknown or evicted session")
    if session.mode != plan_.mode:
        raise precondition(f"the session is in {session.mode} mode, the request in {plan_.mode} mode")
    if plan_.base_length > len(held):
        raise precondition(f"base_length {plan_.base_length} is past the session's length {len(held)}")
    base = held[: plan_.base_length]
    if context_crc(plan_.mode, base) != base_crc:
        raise precondition("base_crc32 does not match the session's context")
    if plan_.mode == "text":
        whole = base + plan_.new_context
        try:
            whole.decode("utf-8")
        except UnicodeDecodeError:
            raise precondition("base_length splits a UTF-8 character") from None
        return whole
    return list(base) + plan_.new_context


def tokens_for(backend: Backend, max_context: int, mode: str, whole, extra_tokens: int) -> list[int]:
    """The token ids of a whole context, within the context limit with `extra_tokens` to come."""
    tokens = backend.tokenize(whole) if mode == "text" else list(whole)
    if len(tokens) + extra_tokens > max_context:
        raise invalid(f"context too long: {len(tokens)} tokens + max_tokens {extra_tokens} "
                      f"is over the limit of {max_context}")
    if not tokens:
        raise invalid("the context is empty: send some text or tokens to continue")
    return tokens


def sampling_params(s: pb.Sampling) -> SamplingParams:
    if not math.isfinite(s.temperature) or not 0.0 <= s.temperature <= 2.0:
        raise invalid("sampling.temperature must be in [0, 2] (0 = greedy)")
    if not math.isfinite(s.top_p) or not 0.0 <= s.top_p <= 1.0:
        raise invalid("sampling.top_p must be in (0, 1] (0 means 1)")
    return SamplingParams(temperature=float(s.temperature), top_p=float(s.top_p) or 1.0,
                          top_k=int(s.top_k), seed=int(s.seed) % (1 << 32))

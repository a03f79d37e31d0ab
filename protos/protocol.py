"""The relay protocol's rules: one definition for the device and for training.

The edge decoder (edge/decode_loop.py, edge/splice.py; the evaluation harness runs it) and
GRPO's rollout (training/relay/grpo.py) decode on different engines (llama.cpp, torch) but
take every protocol decision here, so a rollout and the device write the same text, the
same calls and the same LLM spans (tests/test_relay_parity.py checks it). Written out for
people in docs/relay-protocol.md.

- How many tokens a call gets (`call_size`): the N the SLM wrote, capped by the calls left,
  the request's LLM-token budget, its total-token budget and the room left in the SLM's
  context; 0 means no call (the command stays where it is and the SLM goes on).
- What happens to a command after its call (`drops_command`): "keep" (the paper's: it
  stays in the SLM's context, the LLM's tokens follow it) or "drop" (it leaves the SLM's
  context when the LLM wrote something: a call that brought nothing leaves it there, or
  the SLM, back in the same state, would ask again at once).
- The limits an answer runs under (`EVAL_LIMITS`, `TRAIN_LIMITS`): one definition for the
  evaluation harness and for GRPO's rollouts, and their difference named with its reason.
The command's grammar is protos/grammar.py; what the LLM is shown (the prompt and the text
so far with every command removed) is grammar.remove_commands / remove_command_ids.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMAND_CONTEXTS = ("keep", "drop")


@dataclass(frozen=True)
class RelayLimits:
    """Per-answer limits: calls (commands that get LLM tokens) and response tokens (SLM +
    LLM, in the SLM's tokenizer; the LLM may write all of them)."""

    max_calls: int
    max_tokens: int


# The evaluation harness's (training/eval/runner.py Evaluator: its max_calls / max_tokens
# defaults; Limits(max_calls, max_llm_tokens=max_total_tokens=max_tokens) on the edge): the
# paper's 4 calls at evaluation.
EVAL_LIMITS = RelayLimits(max_calls=4, max_tokens=256)
# GRPO's rollouts (training/relay/config.py GrpoConfig max_calls / max_tokens), on purpose not
# the evaluation's: 2 calls is the paper's training limit (fewer calls than at evaluation, so the
# policy learns to call sparingly, while the call-ratio penalty counts every N it asks for,
# served or not); 64 tokens keeps the default tiny pair's rollouts cheap on 2 CPU cores (its
# answers are shorter). A real pair writes longer answers (GSM8K: ~270 tokens): train it with
# max_tokens = EVAL_LIMITS.max_tokens, or the rollouts are cut before the answer.
TRAIN_LIMITS = RelayLimits(max_calls=2, max_tokens=64)


# The GGUF metadata key in which a relay SLM's export records the command context it was trained
# for (training/models/export.py writes it; the edge reads it when none is given).
COMMAND_CONTEXT_KEY = "relayllm.command_context"


def check_command_context(value: str) -> str:
    if value not in COMMAND_CONTEXTS:
        raise ValueError(f"command_context must be 'keep' or 'drop', got {value!r}")
    return value


def call_size(requested: int, *, calls: int, max_calls: int, llm_tokens: int, max_llm_tokens: int,
              total_tokens: int, max_total_tokens: int, room: int | None = None) -> int:
    """Tokens the LLM may write for a command asking `requested`; 0 = no call.

    `calls`, `llm_tokens`, `total_tokens`: what the answer has used so far (total counts
    every response token, the SLM's command tokens included); `room`: tokens that still fit
    in the SLM's context (one is kept free, for the SLM's next token)."""
    if calls >= max_calls:
        return 0
    n = min(int(requested), max_llm_tokens - llm_tokens, max_total_tokens - total_tokens)
    if room is not None:
        n = min(n, room - 1)
    return max(0, n)


def drops_command(command_context: str, spliced: int) -> bool:
    """Whether the command leaves the SLM's context now that its call spliced `spliced` tokens."""
    return command_context == "drop" and spliced > 0

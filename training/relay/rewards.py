"""GRPO rewards for relay decoding.

"table" (the brief's group-case table), decided per prompt group (all rollouts of one
prompt; the reference decides the case over the whole batch, which is a bug):

  A: some sample of the group is correct without calling
       correct, no call -> 1.5 ; correct, called -> 1 - call_ratio ; wrong -> 0
  B: only samples that called are correct (at least one)
       correct, called -> 1 - call_ratio ; wrong, no call -> -1 ; wrong, called -> 0
  C: no sample correct
       called -> call_ratio ; no call -> 0

"simple": accuracy - lam * call_ratio, per sample.

call_ratio = sum of the requested N / response length, capped at 1. The requested N is
what the SLM wrote in its commands (grpo.py RelayRollout), not what the limits let the
LLM write: a command capped by the budget, or refused for want of calls, costs what it asked.
"""

from __future__ import annotations

from dataclasses import dataclass

CASE_A, CASE_B, CASE_C = "A", "B", "C"
REWARDS = ("table", "simple")


@dataclass(frozen=True)
class Rollout:
    correct: bool
    calls: int  # commands that asked for at least one token
    requested: int  # sum of the N the SLM asked for (every command; not capped by the limits)
    length: int  # response length in tokens (all authors)

    @property
    def called(self) -> bool:
        return self.calls > 0

    @property
    def call_ratio(self) -> float:
        return min(1.0, self.requested / self.length) if self.length > 0 else (1.0 if self.requested else 0.0)


def group_case(group: list[Rollout]) -> str:
    """The case of one prompt group (A, B or C)."""
    if any(r.correct and not r.called for r in group):
        return CASE_A
    if any(r.correct for r in group):
        return CASE_B  # every correct sample called
    return CASE_C


def table_reward(r: Rollout, case: str) -> float:
    if case == CASE_A:
        if not r.correct:
            return 0.0
        return 1.5 if not r.called else 1.0 - r.call_ratio
    if case == CASE_B:
        if r.correct:
            return 1.0 - r.call_ratio  # correct samples all called in case B
        return 0.0 if r.called else -1.0
    return r.call_ratio if r.called else 0.0


def simple_reward(r: Rollout, lam: float = 0.5) -> float:
    return float(r.correct) - lam * r.call_ratio


def group_rewards(rollouts: list[Rollout], groups: list, *, kind: str = "table", lam: float = 0.5) -> tuple[list[float], list[str]]:
    """Rewards of a batch; `groups[i]` names the prompt group of rollout i (any hashable).
    Returns (rewards, case of each rollout's group; "" for the simple reward)."""
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {kind!r}: choose one of {REWARDS}")
    if len(rollouts) != len(groups):
        raise ValueError("one group key per rollout")
    if kind == "simple":
        return [simple_reward(r, lam) for r in rollouts], [""] * len(rollouts)
    members: dict = {}
    for r, g in zip(rollouts, groups):
        members.setdefault(g, []).append(r)
    cases = {g: group_case(rs) for g, rs in members.items()}
    return [table_reward(r, cases[g]) for r, g in zip(rollouts, groups)], [cases[g] for g in groups]

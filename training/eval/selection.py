"""Tuning discipline: every swept setting is chosen on the validation split, by one rule.

The rule, the same for every router and for relay's own setting (whatever its knob:
ModeRun.setting / setting_name): the highest validation accuracy at an LLM token ratio of at
most `ratio_cap`; ties go to the lower ratio; when no setting is under the cap, the one with
the lowest ratio. The table then reports the chosen setting on the test split.

The random token router is a baseline, not a router to tune: it is swept with p increasing
until it reaches relay's accuracy (`sweep_until`), and "LLM tokens saved against the random
router at matched accuracy" is read off measured points only (`saved_vs_random`): the
cheapest measured random run at or above relay's accuracy, never a line drawn between two.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable, Sequence

from relayllm.training.eval.records import ModeRun

RATIO_CAP = 0.15  # the LLM token share a setting may spend on validation


def rule_text(ratio_cap: float = RATIO_CAP) -> str:
    return (f"highest validation accuracy at an LLM token ratio <= {ratio_cap:.0%} (ties: the lower ratio; "
            "no setting under the cap: the lowest ratio)")


@dataclass
class Choice:
    """The setting chosen for one mode on validation, and why."""

    mode: str
    setting_name: str | None
    setting: float | None
    validation_accuracy: float
    validation_ratio: float
    reason: str
    admissible: int = 0  # settings at or under the cap, among...
    tried: int = 0       # ...the settings tried

    @property
    def chose(self) -> bool:
        """The rule chose among admissible settings: two or more were tried, one or more under
        the cap. A lone setting, or the lowest ratio when none is under the cap, is not a choice."""
        return self.tried >= 2 and self.admissible >= 1

    @property
    def mark(self) -> str:
        """What a table row at this setting says about it: " (chosen)" only when `chose`."""
        if self.chose:
            return " (chosen)"
        if self.tried and not self.admissible:
            return " (none under the cap: the lowest ratio)"
        return ""

    def to_dict(self) -> dict:
        return asdict(self)


def choose(runs: Sequence[ModeRun], ratio_cap: float = RATIO_CAP) -> Choice:
    """The setting among `runs` (one mode, validation split) that the rule picks."""
    if not runs:
        raise ValueError("nothing to choose from: no validation runs")
    if not 0.0 <= ratio_cap <= 1.0:
        raise ValueError(f"the LLM token ratio cap is a share in [0, 1], got {ratio_cap}")
    under = [r for r in runs if r.llm_token_ratio <= ratio_cap]
    if under:
        best = max(under, key=lambda r: (r.accuracy, -r.llm_token_ratio))
        why = (f"best validation accuracy ({best.accuracy:.1%}) of {len(under)} of {len(runs)} settings "
               f"at <= {ratio_cap:.0%} LLM tokens")
    else:
        best = min(runs, key=lambda r: (r.llm_token_ratio, -r.accuracy))
        why = f"no setting at <= {ratio_cap:.0%} LLM tokens; the lowest ratio ({best.llm_token_ratio:.1%})"
    return Choice(best.mode, best.setting_name, best.setting, best.accuracy, best.llm_token_ratio, why,
                  admissible=len(under), tried=len(runs))


def chosen_run(runs: Iterable[ModeRun], choice: Choice) -> ModeRun:
    """The run of `runs` (test split) at the chosen setting."""
    for r in runs:
        if r.mode == choice.mode and r.setting == choice.setting:
            return r
    raise ValueError(f"no {choice.mode} run at {choice.setting_name}={choice.setting}")


def sweep_until(run_at: Callable[[float], ModeRun], ps: Iterable[float], accuracy: float,
                start: Sequence[ModeRun] = ()) -> list[ModeRun]:
    """Runs at each p of `ps` in increasing order, stopping after the first that reaches
    `accuracy`; runs in `start` (already measured) are reused, not run again."""
    done = {r.setting: r for r in start}
    runs: list[ModeRun] = []
    for p in sorted(set(ps)):
        run = done.get(p) or run_at(p)
        runs.append(run)
        if run.accuracy >= accuracy:
            break
    return runs


@dataclass
class CostSaved:
    """LLM tokens relay saves against the random router at relay's accuracy, from measured points."""

    random_setting: float | None  # p of the cheapest measured random run at >= relay's accuracy
    random_ratio: float | None  # its LLM token ratio (None: no measured run reached relay)
    saved: float | None  # 1 - relay_ratio / random_ratio
    below: float | None  # LLM token ratio of the dearest measured random run still below relay's accuracy
    note: str

    def to_dict(self) -> dict:
        return asdict(self)


def saved_vs_random(relay: ModeRun, randoms: Sequence[ModeRun]) -> CostSaved:
    """From measured random runs only: the cheapest one at or above relay's accuracy.

    The random router may reach relay somewhere between the last run below and this one;
    the figure is what was measured, so it can overstate the saving by at most that gap
    (`below` says where the gap starts).
    """
    reached = [r for r in randoms if r.accuracy >= relay.accuracy]
    missed = [r for r in randoms if r.accuracy < relay.accuracy]
    below = max((r.llm_token_ratio for r in missed), default=None)
    if not reached:
        top = max(randoms, key=lambda r: r.llm_token_ratio, default=None)
        where = f" (up to p={top.setting:g}: {top.accuracy:.1%})" if top is not None else " (no random run)"
        return CostSaved(None, None, None, below, f"never reached: the random router stays below relay's "
                         f"{relay.accuracy:.1%}{where}")
    at = min(reached, key=lambda r: r.llm_token_ratio)
    saved = 1.0 - relay.llm_token_ratio / at.llm_token_ratio if at.llm_token_ratio > 0 else None
    gap = f"; the measured run below it: {below:.1%} LLM tokens" if below is not None else ""
    note = (f"{saved:.1%}" if saved is not None else "n/a") + (
        f" (measured: random p={at.setting:g} reaches {at.accuracy:.1%} at {at.llm_token_ratio:.1%} LLM tokens "
        f"against relay's {relay.llm_token_ratio:.1%}{gap})")
    return CostSaved(at.setting, at.llm_token_ratio, saved, below, note)

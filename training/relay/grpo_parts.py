"""GRPO's pieces around TRL's trainer: the relay reward function, the step callbacks and the
training questions.

`RelayReward` is the reward function GRPOTrainer calls (training/relay/rewards.py decides the
values); the callbacks append each step's log to metrics.jsonl and stop at a time budget with
a checkpoint. Used by training/relay/grpo.py; not here: the rollout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from relayllm.training.errors import TrainingError
from relayllm.training.relay.rewards import REWARDS, Rollout, group_rewards


class RelayReward:
    """GRPO reward function: the brief's table per prompt group, or accuracy - lam * call_ratio.
    Also logs accuracy, calls, call ratio and LLM token ratio through TRL's `log_metric`."""

    def __init__(self, kind: str = "table", lam: float = 0.5, grader=None):
        if kind not in REWARDS:
            raise TrainingError(f"unknown reward {kind!r}: choose one of {REWARDS}")
        if grader is None:  # the built-in task's; a QuestionSet brings its own (math-verify for JSONL data)
            from relayllm.training.data import task

            grader = task.grade
        self.kind, self.lam, self.grader = kind, lam, grader
        self.__name__ = f"relay_{kind}"

    def __call__(self, prompts, completions, completion_ids, answer, relay_calls, relay_requested,
                 relay_llm_tokens, log_metric=None, **_) -> list[float]:
        rollouts = [Rollout(correct=bool(self.grader(c, a)), calls=k, requested=n, length=len(ids))
                    for c, a, k, n, ids in zip(completions, answer, relay_calls, relay_requested, completion_ids)]
        rewards, cases = group_rewards(rollouts, list(prompts), kind=self.kind, lam=self.lam)
        if log_metric is not None:
            total = sum(len(ids) for ids in completion_ids)
            log_metric("relay/accuracy", sum(r.correct for r in rollouts) / len(rollouts))
            log_metric("relay/calls_per_sample", sum(relay_calls) / len(rollouts))
            log_metric("relay/call_ratio", sum(r.call_ratio for r in rollouts) / len(rollouts))
            log_metric("relay/llm_token_ratio", sum(relay_llm_tokens) / max(1, total))
            for case in "ABC":
                if self.kind == "table":
                    log_metric(f"relay/case_{case}", sum(c == case for c in cases) / len(cases))
        return rewards


def _metrics_callback(path: Path):
    from transformers import TrainerCallback

    class MetricsJsonl(TrainerCallback):
        """Appends each training log (one per step with logging_steps=1) to a JSONL file."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero and "loss" in logs:
                with path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return MetricsJsonl()


def _budget_callback(minutes: float):
    """Stops training at the end of the first step past `minutes` of wall time, with a
    checkpoint there: the next run resumes from it and writes the same next step as a run
    that was never cut (tests/test_grpo.py)."""
    import time

    from transformers import TrainerCallback

    class Budget(TrainerCallback):
        def __init__(self):
            self.started = time.monotonic()
            self.cut_at = None

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() - self.started >= minutes * 60 and state.global_step < state.max_steps:
                control.should_save = control.should_training_stop = True
                self.cut_at = state.global_step
            return control

    return Budget()


def _truncate_metrics(path: Path, upto_step: int) -> None:
    """On resume: drop the lines of steps after the checkpoint (they are run again)."""
    if path.is_file():
        keep = [line for line in path.read_text().splitlines() if json.loads(line).get("step", 0) <= upto_step]
        path.write_text("".join(line + "\n" for line in keep))


def _prompt_rows(llm_model, tokenizer, rows, n_prompts: int, seed: int, solvable_only: bool, progress: bool, *,
                 questions=None, grader=None, max_tokens: int = 64):
    """Training prompts (text, answer); by default only those the LLM solves greedily."""
    from relayllm.training.relay.warmup import _rows, greedy_ids

    pairs = _rows(rows, None, None, n_prompts * (2 if solvable_only else 1), seed, questions=questions,
                  tokenizer=tokenizer)
    if solvable_only and llm_model is not None:
        sols = greedy_ids(llm_model, tokenizer, [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs],
                          max_tokens)
        pairs = [pa for pa, s in zip(pairs, sols) if grader(tokenizer.decode(s, skip_special_tokens=True), pa[1])]
    if not pairs:
        raise TrainingError("no GRPO training prompt (the LLM solved none)")
    return pairs[:n_prompts]

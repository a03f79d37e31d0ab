"""Records appended per question, so that a long evaluation resumes where it stopped.

On the real pair one GSM8K answer takes 8-16 s on a 2-core CPU, and a table is hours of
work. Each run (one mode at one setting) appends every graded record to its own JSONL file
under `<out>/records/`, flushed at once; a second run of the same command reads them back
and answers only the questions not yet there. The file's name holds a hash of everything
that decides the answers (mode, setting, models, budget, instruction, command context), so
a changed setting starts a fresh file instead of mixing answers.

A budget (`--budget-minutes`) stops a run between two questions with BudgetReached: what
was answered is kept, and the same command goes on from there.

Not here: the table (report.py) or the records themselves (records.py).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

from relayllm.training.errors import EvalError
from relayllm.training.eval.records import QuestionRecord


class BudgetReached(EvalError):
    """The time budget ran out between two questions; the records so far are kept."""


class Journal:
    """One run's records file: `done()` reads what is there, `append(record)` adds one."""

    def __init__(self, folder: str | Path, key: dict):
        self.key = key
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        label = "-".join(str(key.get(k)) for k in ("mode", "setting") if key.get(k) is not None)
        self.path = Path(folder) / f"{label}-{digest}.jsonl"

    def done(self) -> dict[tuple[int, str], QuestionRecord]:
        """Records already written, by (question index, question) (a torn last line, from a
        kill, is ignored). The question is part of the key: two splits answered under one
        key (the suite's validation and development test) share indices, not questions."""
        out: dict[tuple[int, str], QuestionRecord] = {}
        if not self.path.is_file():
            return out
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rec = QuestionRecord(**json.loads(line))
            except (ValueError, TypeError):
                continue
            out[(rec.index, rec.question)] = rec
        return out

    def append(self, record: QuestionRecord) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            f.flush()


class Budget:
    """A wall-clock budget shared by every run of one command (None: no limit)."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes

    def check(self, done: int, total: int, label: str) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise BudgetReached(f"time budget reached during {label} after {done}/{total} questions; "
                                "the records are kept: run the same command again to go on")

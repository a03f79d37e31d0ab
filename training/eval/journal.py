"""Records appended per question, so that a long evaluation resumes where it stopped.

On the real pair one GSM8K answer takes 8-16 s on a 2-core CPU, and a table is hours of
work. Each run (one mode at one setting) appends every graded record to its own JSONL file
under `<out>/records/`, flushed at once; a second run of the same command reads them back
and answers only the questions not yet there. The file's name holds a hash of everything
that decides the answers (mode, setting, models, budget, instruction, command context), so
a changed setting starts a fresh file instead of mixing answers.

Models are named in that key by their file's name (so that records stay valid when a model
moves), and beside each records file a `.files.json` keeps each model file's size and a hash
of its first and last MiB: a retrained model under the same name is refused with a clear
error instead of being silently credited with the old model's answers. A records file made
before these fingerprints existed adopts the files it is resumed with.

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

    def __init__(self, folder: str | Path, key: dict, files: dict[str, str | Path] | None = None):
        """`files`: role -> model file whose content the records depend on (see the module doc)."""
        self.key = key
        self.files = {role: Path(f) for role, f in (files or {}).items() if Path(f).is_file()}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        label = "-".join(str(key.get(k)) for k in ("mode", "setting") if key.get(k) is not None)
        self.path = Path(folder) / f"{label}-{digest}.jsonl"
        self.files_path = self.path.with_suffix(".files.json")

    def check_files(self) -> None:
        """Refuse records made with other model files of the same names; record the files'
        fingerprints when none are recorded yet."""
        now = {role: file_fingerprint(f) for role, f in sorted(self.files.items())}
        if self.files_path.is_file():
            before = json.loads(self.files_path.read_text(encoding="utf-8"))
            changed = [role for role in now if role in before and before[role] != now[role]]
            if changed:
                role = changed[0]
                raise EvalError(f"{self.path} holds answers made with another {role} file named "
                                f"{now[role]['name']} (size or content differ: {before[role]} vs {now[role]}); "
                                "move those records away, or give the new model file another name")
            if all(role in before for role in now):
                return
            now = {**before, **now}
        if now:
            self.files_path.parent.mkdir(parents=True, exist_ok=True)
            self.files_path.write_text(json.dumps(now, indent=1) + "\n", encoding="utf-8")

    def done(self) -> dict[tuple[int, str], QuestionRecord]:
        """Records already written, by (question index, question) (a torn last line, from a
        kill, is ignored). The question is part of the key: two splits answered under one
        key (the suite's validation and development test) share indices, not questions."""
        out: dict[tuple[int, str], QuestionRecord] = {}
        self.check_files()
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


def file_fingerprint(path: str | Path, span: int = 1 << 20) -> dict:
    """A model file's name, size and the sha256 of its first and last `span` bytes: cheap on a
    GB-sized GGUF, and a retrained model's weights (or its GGUF metadata) change them."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(span))
        if size > span:
            f.seek(max(span, size - span))
            h.update(f.read(span))
    return {"name": path.name, "size": size, "sha256_head_tail": h.hexdigest()[:16]}


class Budget:
    """A wall-clock budget shared by every run of one command (None: no limit)."""

    def __init__(self, minutes: float | None):
        self.deadline = None if minutes is None else time.monotonic() + 60.0 * minutes

    def check(self, done: int, total: int, label: str) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise BudgetReached(f"time budget reached during {label} after {done}/{total} questions; "
                                "the records are kept: run the same command again to go on")

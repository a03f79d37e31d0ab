"""Question-and-answer data sets: JSONL benchmarks (GSM8K, MATH-500) and the built-in task.

A JSONL line holds a question (`question`, or MATH's `problem`) and its gold answer
(`answer`: a number, an expression, or a GSM8K worked solution ending in `#### n`; the
grader reads each form, training/data/grading.py). Evaluation (training/eval) and relay
training (training/relay) read the same files through `load_jsonl`.
Not here: how a question is shown to a model (training/data/prompts.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from relayllm.training.errors import DataError

QUESTION_KEYS = ("question", "problem")  # GSM8K, MATH-500


@dataclass(frozen=True)
class Example:
    question: str
    answer: str


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    """Read a JSONL benchmark with a question and an `answer` per line; readable errors on bad lines."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            key = next((k for k in QUESTION_KEYS if isinstance(row, dict) and k in row), None)
            if key is None or "answer" not in row:
                raise DataError(f"{path}:{line_no}: each line needs a 'question' (or 'problem') and an 'answer' field")
            examples.append(Example(str(row[key]), str(row["answer"])))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise DataError(f"{path}: no examples")
    return examples


def builtin_examples(limit: int | None = None, *, split: str = "test") -> list[Example]:
    """The built-in task's held-out (`test`) or `train` split as Examples."""
    from relayllm.training.data import task

    rows = task.test_split() if split == "test" else task.train_split()
    examples = [Example(str(r.question), str(r.answer)) for r in rows]
    return examples[:limit] if limit is not None else examples

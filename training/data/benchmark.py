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
    """The built-in task's `test` (held out: the table), `validation` (settings are chosen on
    it) or `train` split as Examples."""
    from relayllm.training.data import task

    try:
        rows = task.split(split)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    examples = [Example(str(r.question), str(r.answer)) for r in rows]
    return examples[:limit] if limit is not None else examples


@dataclass
class QuestionSet:
    """Questions for relay training, shown and graded as evaluation shows and grades them.

    The built-in task: its raw prompt format and exact grading. A JSONL benchmark: each
    question through the SLM tokenizer's chat template with `instruction`
    (training/data/prompts.py hf_prompt; `chat` None: when the tokenizer has a template),
    graded by math-verify.
    """

    examples: list[Example]
    builtin: bool = False
    instruction: str | None = None
    chat: bool | None = None

    @classmethod
    def from_config(cls, data: str | Path | None, instruction: str | None = None,
                    chat: bool | None = None) -> "QuestionSet":
        if data is None:
            return cls(builtin_examples(split="train"), builtin=True)
        return cls(load_jsonl(data), instruction=instruction, chat=chat)

    @property
    def grader(self):
        from relayllm.training.data.grading import make_grader

        return make_grader("exact" if self.builtin else "math")

    def pairs(self, tokenizer, n: int | None = None) -> list[tuple[str, str]]:
        """(prompt text, gold answer) for the first `n` questions, in the SLM tokenizer's format."""
        from relayllm.training.data import prompts, task

        rows = self.examples[:n] if n is not None else self.examples
        if self.builtin:
            return [(task.format_prompt(e.question), e.answer) for e in rows]
        return [(prompts.hf_prompt(tokenizer, e.question, instruction=self.instruction, chat=self.chat), e.answer)
                for e in rows]

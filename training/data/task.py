"""The built-in benchmark: multi-digit addition with the carries written out.

A question is two numbers of 3 or 4 digits, `3456+789`. The prompt is the question with
both operands padded to 4 digits and a colon; the gold solution adds column by column,
least significant digit first, each column written `a+b+c=ss` (c: the carry coming in, ss:
the column sum in two digits), and ends with `#` and the sum:

    3456+0789:6+9+0=15;5+8+1=14;4+7+1=12;3+0+1=04;#4245

SmolLM2's tokenizer splits digits one by one and has single tokens for `+ = ; : #`, so a
solution is a few dozen tokens drawn from 15 token ids. The task is made for relay decoding:
a small model gets most of the columns right but slips at a few critical steps (a carry, a
two-digit column sum, reading the sum back in reverse at the end); one wrong token decides
the answer, so a few LLM tokens at the right place recover it.

Splits are fixed by seed and disjoint (training/data/splits.py): test (300 questions, what
the table reports) is drawn first, then validation (200, where every threshold and router
setting is chosen), then train; none shares a question with another.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

from relayllm.protos.grammar import remove_commands
from relayllm.training.data.splits import Split, disjoint_splits

PROMPT_END = ":"  # closes the question: the model starts its solution after it
ANSWER_MARK = "#"  # the final answer follows it
STEP_SEP = ";"
MIN_DIGITS, MAX_DIGITS = 3, 4
TEST_SIZE = 300
VALIDATION_SIZE = 200
TRAIN_SIZE = 20_000
SPLIT_SEED = 1234
# Drawn in this order; the seed offsets keep test and train on the seeds they always had.
SPLITS = (Split("test", TEST_SIZE, 0), Split("validation", VALIDATION_SIZE, 2), Split("train", TRAIN_SIZE, 1))

# Every character a prompt or a solution can hold (each is one SmolLM2 token).
ALPHABET = "0123456789+=;:#"


@dataclass(frozen=True)
class Example:
    question: str  # "3456+789"
    answer: str  # "4245"
    solution: str  # the gold chain of thought, answer included (no prompt)

    @property
    def prompt(self) -> str:
        return format_prompt(self.question)

    @property
    def text(self) -> str:
        """Prompt and gold solution: one training sequence (the EOS token goes after it)."""
        return self.prompt + self.solution


def format_prompt(question: str) -> str:
    """How the models see a question: both operands padded to the same width, so every
    digit sits at a fixed place (a tiny transformer finds it by position)."""
    m = re.fullmatch(r"\s*(\d+)\s*\+\s*(\d+)\s*", question)
    if m is None:
        return f"{question}{PROMPT_END}"
    a, b = m.groups()
    width = max(len(a), len(b), MAX_DIGITS)
    return f"{a.zfill(width)}+{b.zfill(width)}{PROMPT_END}"


def solve(a: int, b: int) -> str:
    """The gold solution of a+b: one `x+y+c=s` step per column (LSD first), then `#sum`."""
    width = max(len(str(a)), len(str(b)), MAX_DIGITS)
    da, db = str(a).zfill(width)[::-1], str(b).zfill(width)[::-1]
    steps, carry = [], 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s:02d}")  # two digits: every step has the same length
        carry = s // 10
    return STEP_SEP.join(steps) + STEP_SEP + ANSWER_MARK + str(a + b)


def make_example(a: int, b: int) -> Example:
    return Example(question=f"{a}+{b}", answer=str(a + b), solution=solve(a, b))


def _random_operand(rng: random.Random) -> int:
    digits = rng.randint(MIN_DIGITS, MAX_DIGITS)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def generate(n: int, seed: int, exclude: set[str] = frozenset()) -> list[Example]:
    """`n` distinct questions drawn from `seed`, none of them in `exclude`."""
    rng = random.Random(seed)
    seen = set(exclude)
    out = []
    while len(out) < n:
        a, b = _random_operand(rng), _random_operand(rng)
        q = f"{a}+{b}"
        if q in seen:
            continue
        seen.add(q)
        out.append(make_example(a, b))
    return out


@lru_cache(maxsize=4)
def _splits(seed: int) -> dict[str, tuple[Example, ...]]:
    return disjoint_splits(generate, SPLITS, seed)


def train_split(seed: int = SPLIT_SEED) -> list[Example]:
    """Training questions (never in the validation or test split of the same seed)."""
    return list(_splits(seed)["train"])


def validation_split(seed: int = SPLIT_SEED) -> list[Example]:
    """Questions for choosing thresholds and settings (never in train or test)."""
    return list(_splits(seed)["validation"])


def test_split(seed: int = SPLIT_SEED) -> list[Example]:
    """Held-out questions: the benchmark the table reports."""
    return list(_splits(seed)["test"])


def split(name: str, seed: int = SPLIT_SEED) -> list[Example]:
    """A split by name: "train", "validation" or "test"."""
    splits = _splits(seed)
    if name not in splits:
        raise ValueError(f"unknown split {name!r}: one of {', '.join(splits)}")
    return list(splits[name])


_ANSWER_RE = re.compile(re.escape(ANSWER_MARK) + r"\s*(-?\d+)")


def extract_answer(response: str) -> str | None:
    """The number after the last answer mark, or None when the response never states one.

    Command tokens (`<call>N</call>`) are removed first: a relay response keeps its
    commands in the text, and their N must not be read as the answer.
    """
    cleaned = remove_commands(response)
    found = _ANSWER_RE.findall(cleaned)
    return found[-1] if found else None


def grade(response: str, answer: str) -> bool:
    """Exact: the final answer after `#` equals the gold sum."""
    got = extract_answer(response)
    return got is not None and got.lstrip("0") == str(answer).strip().lstrip("0")

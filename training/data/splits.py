"""Fixed train / validation / test splits of a generated task, disjoint by construction.

A task that draws its questions from a seed (training/data/task.py's `generate`) gets its
splits here: `disjoint_splits(generate, SPLITS, seed)` draws each split in turn, each from
its own seed (`seed + offset`), excluding every question an earlier split already holds, so
no question is in two splits. The test split is drawn first: its questions depend on the
seed alone, never on the other splits' sizes. Validation is where every threshold and
router setting is chosen (training/demo.py); test is what the table reports; train is what
models learn from. A new task reuses this with its own `generate` and sizes.

Not here: what a question looks like, or how a split is shown or graded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence


class HasQuestion(Protocol):
    question: str


@dataclass(frozen=True)
class Split:
    """One split: its name, how many questions it holds, and the offset of its own seed."""

    name: str  # "test", "validation", "train"
    size: int  # number of distinct questions
    seed_offset: int  # drawn from seed + seed_offset (fixed per split: changing one split's size keeps the others' seeds)

    def __post_init__(self):
        if not self.name:
            raise ValueError("a split needs a name")
        if self.size < 0:
            raise ValueError(f"split {self.name!r}: size must be >= 0, got {self.size}")


Generate = Callable[[int, int, set], list]  # (n, seed, exclude questions) -> n new examples


def disjoint_splits(generate: Generate, splits: Sequence[Split], seed: int) -> dict[str, tuple]:
    """Every split of `splits`, drawn in that order, each disjoint from the ones before it.

    `generate(n, seed, exclude)` returns `n` distinct examples (each with a `.question`) none
    of whose questions is in `exclude`.
    """
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ValueError(f"split names must be distinct, got {names}")
    offsets = [s.seed_offset for s in splits]
    if len(set(offsets)) != len(offsets):
        raise ValueError(f"each split needs its own seed offset, got {offsets}")
    taken: set[str] = set()
    out: dict[str, tuple] = {}
    for split in splits:
        rows = tuple(generate(split.size, seed + split.seed_offset, set(taken)))
        questions = {r.question for r in rows}
        if len(questions) != len(rows) or questions & taken:
            raise ValueError(f"split {split.name!r}: the generator returned repeated or excluded questions")
        taken |= questions
        out[split.name] = rows
    return out

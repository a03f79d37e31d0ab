"""GSM8K subsets shipped with relayllm: a training pool, validation and a development test.

GSM8K's train split (7,473 problems, MIT; Cobbe et al., 2021) is cut once, by a fixed seed,
into three disjoint subsets that live in this package (training/data/gsm8k/, with the
licence), so nothing at run time or in the tests reads a folder outside the repository:

    pool        1,500  routers' labels and relay training
    validation    150  every setting (threshold, share, calibration) is chosen here
    dev-test      300  what the tables report (the headline rows use >= 200 of it)

GSM8K's own test split stays untouched: it is the project's held-out check, never fetched
or tuned on. Each line keeps `id`, the problem's 0-based line in the source train.jsonl, so
the cut is reproducible: `python -m relayllm.training.data.gsm8k SOURCE/train.jsonl`
rebuilds the same files from the same source (SOURCE_SHA256 pins it).

Not here: how a question is shown (prompts.py) or graded (grading.py).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from relayllm.training.data.benchmark import Example, load_jsonl
from relayllm.training.errors import DataError

FOLDER = Path(__file__).with_name("gsm8k")
SEED = 20261203
SOURCE_SIZE = 7473
SOURCE_SHA256 = "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465"
# in the order they are cut from the shuffled source: test first, so its questions depend on the seed alone
SUBSETS = {"dev-test": 300, "validation": 150, "pool": 1500}
SPLITS = tuple(SUBSETS)


def path(split: str) -> Path:
    """The JSONL file of one subset."""
    if split not in SUBSETS:
        raise DataError(f"unknown GSM8K subset {split!r}: choose one of {', '.join(SPLITS)}")
    return FOLDER / f"{split}.jsonl"


def load(split: str, limit: int | None = None) -> list[Example]:
    """The subset's questions and gold answers (GSM8K worked solutions ending in '#### n')."""
    return load_jsonl(path(split), limit)


def ids(split: str) -> list[int]:
    """Each question's line in GSM8K's train.jsonl (how the subsets are shown to be disjoint)."""
    with path(split).open(encoding="utf-8") as f:
        return [json.loads(line)["id"] for line in f if line.strip()]


def cut(source: Path) -> dict[str, list[dict]]:
    """The subsets, cut from GSM8K's train.jsonl by SEED (deterministic for the same file)."""
    raw = source.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SOURCE_SHA256:
        raise DataError(f"{source}: sha256 {digest[:16]}... is not GSM8K's train split as pinned "
                        f"({SOURCE_SHA256[:16]}...)")
    rows = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    order = list(range(len(rows)))
    random.Random(SEED).shuffle(order)
    out, start = {}, 0
    for split, size in SUBSETS.items():
        out[split] = [{"id": i, "question": rows[i]["question"], "answer": rows[i]["answer"]}
                      for i in order[start:start + size]]
        start += size
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m relayllm.training.data.gsm8k PATH/TO/gsm8k/train.jsonl", file=sys.stderr)
        return 2
    FOLDER.mkdir(exist_ok=True)
    for split, rows in cut(Path(argv[0])).items():
        with path(split).open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {path(split)} ({len(rows)} questions)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Grading for real math benchmarks (GSM8K, MATH-500 as local JSONL) with math-verify.

math-verify extracts the answer from a response (a `\\boxed{}` first, else the last
number or expression) and compares it symbolically with the gold answer, so `0.5`,
`1/2` and `\\frac{1}{2}` agree. The built-in task grades exactly (training/data/task.py).
"""

from __future__ import annotations

from relayllm.protos.grammar import remove_commands


def _gold(gold: str):
    from math_verify import parse

    text = str(gold).strip()
    # GSM8K gold solutions end with '#### 42': the number after the marker is the answer
    if "####" in text:
        text = text.rsplit("####", 1)[1].strip()
    parsed = parse(text)
    if not parsed and not text.startswith("$"):
        parsed = parse(f"${text}$")
    return parsed


def grade(response: str, gold: str) -> bool:
    """True when the response's final answer (boxed, or the last number) equals `gold`."""
    from math_verify import parse, verify

    # commands the relay SLM wrote stay in its text; their N is not an answer
    response = remove_commands(response)
    gold_parsed = _gold(gold)
    answer = parse(response)
    if not gold_parsed or not answer:
        return False
    try:
        return bool(verify(gold_parsed, answer))
    except Exception:  # math-verify can raise on odd expressions: an unreadable answer is wrong
        return False


def make_grader(kind: str):
    """(response, gold) -> correct: `exact` for the built-in task (training/data/task.py),
    `math` (math-verify, boxed / final number) for math benchmarks."""
    if kind == "exact":
        from relayllm.training.data import task

        return task.grade
    if kind == "math":
        return grade
    from relayllm.training.errors import DataError

    raise DataError(f"unknown grader {kind!r}: choose 'exact' or 'math'")

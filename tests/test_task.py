"""The built-in task: generator, splits, gold solutions, exact grading; math-verify grading."""

from __future__ import annotations

import random
import re

import pytest

from relayllm.training.data import grading, task


def test_gold_solution_adds_column_by_column_lsd_first():
    ex = task.make_example(3456, 789)
    assert ex.prompt == "3456+0789:"
    assert ex.solution == "6+9+0=15;5+8+1=14;4+7+1=12;3+0+1=04;#4245"
    assert ex.answer == "4245"
    # a final carry makes a fifth digit
    assert task.make_example(9999, 1).solution.endswith("9+0+1=10;#10000")


@pytest.mark.parametrize("seed", range(20))
def test_every_solution_is_consistent_arithmetic(seed):
    rng = random.Random(seed)
    a, b = rng.randint(100, 9999), rng.randint(100, 9999)
    ex = task.make_example(a, b)
    steps, answer = ex.solution.split("#")
    carry, digits = 0, []
    for step in steps.rstrip(";").split(";"):
        x, y, c, s = map(int, re.fullmatch(r"(\d)\+(\d)\+(\d)=(\d\d)", step).groups())
        assert c == carry and s == x + y + c
        digits.append(s % 10)
        carry = s // 10
    assert int(answer) == a + b == int(str(carry) + "".join(map(str, reversed(digits))))
    assert task.grade(ex.solution, ex.answer)


def test_splits_are_deterministic_and_disjoint():
    train, validation, test = task.train_split(), task.validation_split(), task.test_split()
    assert len(test) == task.TEST_SIZE == 300 and len(validation) == task.VALIDATION_SIZE
    assert len(train) == task.TRAIN_SIZE
    assert task.test_split() == test and task.train_split()[:50] == train[:50]
    assert task.validation_split() == validation
    sets = [{e.question for e in rows} for rows in (train, validation, test)]
    assert [len(s) for s in sets] == [len(train), len(validation), len(test)]  # no repeats inside a split
    assert not sets[0] & sets[1] and not sets[0] & sets[2] and not sets[1] & sets[2]
    assert [e.question for e in task.split("validation")] == [e.question for e in validation]
    # another seed gives another benchmark
    assert task.test_split(seed=7)[:10] != test[:10]
    for ex in test[:20]:
        assert task.MIN_DIGITS <= len(ex.question.split("+")[0]) <= task.MAX_DIGITS


def test_split_logic_is_generic_and_refuses_overlapping_generators():
    from relayllm.training.data.splits import Split, disjoint_splits

    splits = disjoint_splits(task.generate, [Split("test", 40, 0), Split("validation", 30, 2),
                                              Split("train", 100, 1)], seed=3)
    assert {k: len(v) for k, v in splits.items()} == {"test": 40, "validation": 30, "train": 100}
    # the test split depends on the seed alone, not on the other splits' sizes
    alone = disjoint_splits(task.generate, [Split("test", 40, 0)], seed=3)
    assert alone["test"] == splits["test"]

    def careless(n, seed, exclude):  # ignores `exclude` and its seed: the second split repeats the first
        return task.generate(n, 1)

    with pytest.raises(ValueError, match="excluded"):
        disjoint_splits(careless, [Split("a", 20, 0), Split("b", 20, 5)], seed=1)
    with pytest.raises(ValueError, match="distinct"):
        disjoint_splits(careless, [Split("a", 1, 0), Split("a", 1, 1)], seed=1)


def test_generator_is_reproducible_and_excludes():
    first = task.generate(30, seed=5)
    assert first == task.generate(30, seed=5)
    again = task.generate(30, seed=5, exclude={first[0].question})
    assert first[0].question not in {e.question for e in again}


def test_prompt_uses_few_distinct_smollm2_tokens():
    # every character of the alphabet is one token of SmolLM2 (digits are split one by one)
    from relayllm.training.models.tiny_models import load_tokenizer, task_token_ids

    tok = load_tokenizer()
    ids = task_token_ids(tok)
    ex = task.test_split()[0]
    seq = tok.encode(ex.text, add_special_tokens=False)
    assert len(seq) == len(ex.text)  # one token per character
    assert set(seq) <= set(ids) and len(ids) <= 20


@pytest.mark.parametrize("response, answer, ok", [
    ("6+9+0=15;#4245", "4245", True),
    ("#4245", "4245", True),
    ("#4244", "4245", False),
    ("6+9+0=15;5+8+1=14", "4245", False),  # no final answer
    ("#12;#4245", "4245", True),  # the last answer counts
    ("#42<call>45</call>", "4245", False),  # a command's N is not part of the answer
    ("#4245<call>3</call>", "4245", True),
    ("", "4245", False),
])
def test_exact_grading(response, answer, ok):
    assert task.grade(response, answer) is ok


@pytest.mark.parametrize("response, gold, ok", [
    ("so the answer is \\boxed{42}.", "42", True),
    ("we get 12 and then 42", "42", True),
    ("x = 41", "42", False),
    ("\\boxed{0.5}", "\\frac{1}{2}", True),
    ("She pays 18 dollars.", "Janet sells ... #### 18", True),  # GSM8K gold solution
    ("<call>42</call> 7", "42", False),
    ("no number here", "42", False),
])
def test_math_verify_grading(response, gold, ok):
    assert grading.grade(response, gold) is ok

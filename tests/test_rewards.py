"""The group-case reward table of the brief, case by case, decided per prompt group."""

from __future__ import annotations

import pytest

from relayllm.training.relay.rewards import Rollout, group_case, group_rewards, simple_reward, table_reward


def R(correct, requested=0, length=20):
    return Rollout(correct=correct, calls=1 if requested else 0, requested=requested, length=length)


def test_call_ratio_is_requested_over_length_capped_at_one():
    assert R(True, 5, 20).call_ratio == 0.25
    assert R(True, 30, 20).call_ratio == 1.0
    assert R(True, 0, 20).call_ratio == 0.0


def test_case_a_some_sample_correct_without_calling():
    group = [R(True), R(True, 5), R(False), R(False, 4)]
    assert group_case(group) == "A"
    rewards, cases = group_rewards(group, ["p"] * 4)
    assert rewards == [1.5, 0.75, 0.0, 0.0]
    assert cases == ["A"] * 4


def test_case_b_only_callers_are_correct():
    group = [R(True, 5), R(True, 2, 10), R(False), R(False, 4)]
    assert group_case(group) == "B"
    rewards, _ = group_rewards(group, ["p"] * 4)
    assert rewards == [0.75, 0.8, -1.0, 0.0]


def test_case_c_nobody_correct():
    group = [R(False, 5), R(False), R(False, 40)]
    assert group_case(group) == "C"
    rewards, _ = group_rewards(group, ["p"] * 3)
    assert rewards == [0.25, 0.0, 1.0]


def test_case_is_decided_per_group_not_per_batch():
    # group p is case A (a correct sample without calls), group q is case B: the same kind of
    # sample (wrong, no call) gets 0 in p and -1 in q; a batch-wide case would give both the same
    batch = [R(True), R(False), R(True, 5), R(False)]
    rewards, cases = group_rewards(batch, ["p", "p", "q", "q"])
    assert cases == ["A", "A", "B", "B"]
    assert rewards == [1.5, 0.0, 0.75, -1.0]
    # and a case-C group next to a case-A group still rewards calling
    rewards, cases = group_rewards([R(True), R(False, 10), R(False)], ["a", "c", "c"])
    assert cases == ["A", "C", "C"] and rewards == [1.5, 0.5, 0.0]


def test_table_reward_each_cell():
    assert table_reward(R(True), "A") == 1.5
    assert table_reward(R(True, 10), "A") == 0.5
    assert table_reward(R(False, 10), "A") == table_reward(R(False), "A") == 0.0
    assert table_reward(R(True, 10), "B") == 0.5
    assert table_reward(R(False), "B") == -1.0
    assert table_reward(R(False, 10), "B") == 0.0
    assert table_reward(R(False, 10), "C") == 0.5
    assert table_reward(R(False), "C") == 0.0


def test_simple_reward_and_errors():
    assert simple_reward(R(True, 10), lam=0.5) == 0.75
    assert simple_reward(R(False), lam=0.5) == 0.0
    rewards, cases = group_rewards([R(True, 10), R(False)], ["p", "p"], kind="simple", lam=1.0)
    assert rewards == [0.5, 0.0] and cases == ["", ""]
    with pytest.raises(ValueError, match="unknown reward"):
        group_rewards([R(True)], ["p"], kind="nope")
    with pytest.raises(ValueError, match="one group key"):
        group_rewards([R(True)], [])

"""The edge SDK: command detection, decoding on llama.cpp, the splice, fallback, async."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relayllm.edge.command import Command, CommandDetector, command_at_end, remove_commands


# ---------------------------------------------------------------------------------------
# Command detection


def detect(pieces) -> list:
    """Feeds pieces one by one; returns the normalized output (adjacent text merged)."""
    detector = CommandDetector()
    out: list = []
    for piece in pieces:
        out.extend(detector.feed(piece))
    out.append(detector.flush())
    merged: list = []
    for item in out:
        if isinstance(item, str):
            if not item:
                continue
            if merged and isinstance(merged[-1], str):
                merged[-1] += item
                continue
        merged.append(item)
    return merged


def test_command_split_over_pieces_is_found_and_not_shown():
    pieces = ["The sum", " is <", "call", ">", "1", "6", "</", "call", ">", " so"]
    assert detect(pieces) == ["The sum is ", Command(16, "<call>16</call>"), " so"]


def test_command_as_added_tokens():
    assert detect(["x", "<call>", "8", "</call>", "y"]) == ["x", Command(8, "<call>8</call>"), "y"]


@pytest.mark.parametrize("text", ["<call>x</call>", "<call></call>", "<call>1234567</call>", "a < b",
                                  "<cal>3</call>", "<call>3</cal>", "<<call", "<call>12"])
def test_malformed_or_unclosed_commands_are_plain_text(text):
    assert detect([text]) == [text]
    assert detect(list(text)) == [text]


def test_text_is_held_only_while_it_may_be_a_command():
    detector = CommandDetector()
    assert detector.feed("a <ca") == ["a "]
    assert detector.pending == "<ca"
    assert detector.feed("t") == ["<cat"]  # can no longer be a command: released at once
    assert detector.pending == ""


def test_prompt_helpers():
    assert remove_commands("a<call>3</call>b<call>x</call>") == "ab<call>x</call>"
    assert command_at_end("solve it <call>8</call>") == Command(8, "<call>8</call>")
    assert command_at_end("solve it <call>8</call> ") is None


TEXT_ALPHABET = st.sampled_from(["<", ">", "/", "c", "a", "l", "1", "0", "9", "x", " ", "<call>", "</call>",
                                 "é", "\n"])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(TEXT_ALPHABET, max_size=40), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_any_split_gives_the_same_result(parts, cuts):
    text = "".join(parts)
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    pieces = [text[a:b] for a, b in zip(points, points[1:])]
    whole = detect([text])
    assert detect(pieces) == whole
    assert detect(list(text)) == whole
    # Reference: what a regex over the whole text finds.
    expected: list = []
    pos = 0
    for m in re.finditer(r"<call>([0-9]{1,6})</call>", text):
        if m.start() > pos:
            expected.append(text[pos:m.start()])
        expected.append(Command(int(m.group(1)), m.group(0)))
        pos = m.end()
    if pos < len(text):
        expected.append(text[pos:])
    assert whole == expected
    # Nothing is lost: text + commands give back the input.
    assert "".join(x if isinstance(x, str) else x.raw for x in whole) == text

"""Deltas on the wire: how much of a session's text both sides already share.

A device sends only what the cloud does not hold yet; a cloud reuses the KV of what it held
before. Both sides measure the same thing, the longest common prefix, over token ids (token
mode) or UTF-8 bytes (text mode, never cutting a character in two).
"""

from __future__ import annotations

from typing import Sequence


def common_prefix(a: Sequence, b: Sequence) -> int:
    """Length of the longest common prefix of two sequences (token ids, bytes)."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def common_utf8_prefix(a: bytes, b: bytes) -> int:
    """common_prefix of two UTF-8 texts, moved back so that `b[:n]` ends on a whole character."""
    n = common_prefix(a, b)
    while 0 < n < len(b) and (b[n] & 0xC0) == 0x80:  # a continuation byte: inside a character
        n -= 1
    return n

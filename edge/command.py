"""Finding `<call>N</call>` in the SLM's text as it is written.

The SLM's text arrives one token piece at a time, and a command may span pieces
("<", "call", ">", "1", "6", "</", "call", ">") or arrive as single added tokens
("<call>", "16", "</call>") in a trained SLM: detection works on the text either way.

`CommandDetector.feed(piece)` returns what can be decided now, in order: plain text
(str) and commands (Command). Text that might still be the start of a command is held
back; it is released as plain text as soon as it cannot be one. Malformed commands
(`<call>x</call>`, `<call></call>`, more than MAX_DIGITS digits) are plain text, and so is
an unclosed command at the end of the stream (`flush()`).

The result does not depend on how the text is cut into pieces (tests check this with
hypothesis). The common case, a piece with no "<" while nothing is held, costs one
substring test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPEN = "<call>"
CLOSE = "</call>"
MAX_DIGITS = 6  # N above 999999 is not a command (the edge clamps N far below this anyway)

COMMAND_RE = re.compile(r"<call>([0-9]{1,%d})</call>" % MAX_DIGITS)
# A command at the very end of a text (a prompt that already asks for help).
COMMAND_AT_END_RE = re.compile(r"<call>([0-9]{1,%d})</call>\Z" % MAX_DIGITS)
_DIGITS = frozenset("0123456789")


@dataclass(frozen=True, slots=True)
class Command:
    """A complete `<call>N</call>`: `tokens` is N, `raw` the command's text."""

    tokens: int
    raw: str


def remove_commands(text: str) -> str:
    """`text` with every complete command removed: what the LLM is shown."""
    return COMMAND_RE.sub("", text) if OPEN in text else text


def command_at_end(text: str) -> Command | None:
    """The command `text` ends with, if any."""
    match = COMMAND_AT_END_RE.search(text)
    return Command(int(match.group(1)), match.group(0)) if match else None


def could_start_command(rest: str) -> bool:
    """True when `rest` (which begins with "<") is a proper prefix of some command."""
    if len(rest) <= len(OPEN):
        return OPEN.startswith(rest)
    if not rest.startswith(OPEN):
        return False
    end = len(OPEN)
    while end < len(rest) and rest[end] in _DIGITS:
        end += 1
    digits = end - len(OPEN)
    if digits > MAX_DIGITS:
        return False
    tail = rest[end:]
    if not tail:
        return True
    # After at least one digit, only a proper prefix of "</call>" (the whole of it would
    # have been a complete command, matched before this is asked).
    return digits > 0 and len(tail) < len(CLOSE) and CLOSE.startswith(tail)


class CommandDetector:
    """Incremental `<call>N</call>` detection over a stream of text pieces."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    @property
    def pending(self) -> str:
        """Text held back because it might still become a command."""
        return self._held

    def reset(self) -> None:
        self._held = ""

    def feed(self, piece: str) -> list[str | Command]:
        """Adds one piece; returns the text and commands that are decided, in order."""
        if not self._held and "<" not in piece:
            return [piece] if piece else []
        text = self._held + piece
        self._held = ""
        out: list[str | Command] = []
        start = 0  # text[start:] is not decided yet
        scan = 0   # where to look for the next "<"
        while True:
            lt = text.find("<", scan)
            if lt < 0:
                break
            match = COMMAND_RE.match(text, lt)
            if match is not None:
                if lt > start:
                    out.append(text[start:lt])
                out.append(Command(int(match.group(1)), match.group(0)))
                start = scan = match.end()
                continue
            if could_start_command(text[lt:]):
                if lt > start:
                    out.append(text[start:lt])
                self._held = text[lt:]
                return out
            scan = lt + 1  # this "<" is plain text
        if start < len(text):
            out.append(text[start:])
        return out

    def flush(self) -> str:
        """End of the stream (or the SLM is interrupted): whatever is held is plain text."""
        held, self._held = self._held, ""
        return held

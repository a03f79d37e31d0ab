"""The command grammar: `<call>N</call>`, one definition for edge, cloud, training and grading.

The SLM asks the LLM for the next N tokens by writing `<call>N</call>`: the open marker,
1 to MAX_DIGITS decimal digits, the close marker. Anything else (`<call>x</call>`,
`<call></call>`, too many digits) is plain text. A trained SLM has the two markers as
single added tokens (COMMAND_TOKENS); the text form is the same either way.

Finding commands in the SLM's text as it is written:

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
COMMAND_TOKENS = (OPEN, CLOSE)  # added to a relay SLM's tokenizer as single, non-special tokens
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


def format_command(n: int) -> str:
    """The text of the command that asks for `n` tokens."""
    n = int(n)
    if n < 0 or len(str(n)) > MAX_DIGITS:
        raise ValueError(f"a command asks for 0 to {10 ** MAX_DIGITS - 1} tokens, not {n}")
    return f"{OPEN}{n}{CLOSE}"


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


# ---------------------------------------------------------------------------------------
# The same grammar over token ids (a relay SLM with COMMAND_TOKENS in its vocabulary)


def command_at_end_of_ids(ids: list[int], open_id: int, close_id: int, decode) -> int | None:
    """N of the command that `ids` ends with (`... <call> digits </call>`), None when `ids`
    does not end with the close token. `decode(ids) -> str` renders the digits; a malformed
    command (no open token, not 1 to MAX_DIGITS digits inside) asks for nothing: 0."""
    if not ids or ids[-1] != close_id:
        return None
    try:
        start = len(ids) - 1 - ids[::-1].index(open_id, 1)
    except ValueError:
        return 0
    match = COMMAND_AT_END_RE.search(OPEN + decode(ids[start + 1 : -1]).strip() + CLOSE)
    return int(match.group(1)) if match else 0


def remove_command_ids(ids: list[int], open_id: int, close_id: int) -> list[int]:
    """Token ids with every complete open ... close span removed: what the LLM is shown."""
    out: list[int] = []
    start = None
    for t in ids:
        if t == open_id:
            start = len(out)
        out.append(t)
        if t == close_id and start is not None:
            del out[start:]
            start = None
    return out

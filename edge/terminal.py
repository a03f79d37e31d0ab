"""Printing an answer in a terminal as it is written, with the cloud's spans marked.

Colour on a terminal (bold cyan for the LLM's words), ⟦…⟧ brackets otherwise, so a log or a
pipe still shows who wrote what. Used by `relayllm generate` and the demo's live real pair.
"""

from __future__ import annotations

LLM_OPEN, LLM_CLOSE = "⟦", "⟧"
ANSI_LLM, ANSI_RESET = "\033[1;36m", "\033[0m"  # bold cyan for the cloud's words


def print_stream(events, out):
    """Writes the answer as it comes, marking the LLM's spans; returns the Result."""
    from relayllm.edge.events import Result, TextPiece

    tty = out.isatty()
    opening, closing = (ANSI_LLM, ANSI_RESET) if tty else (LLM_OPEN, LLM_CLOSE)
    author = "slm"
    result = None
    for event in events:
        if isinstance(event, TextPiece):
            if event.author != author:
                out.write(opening if event.author == "llm" else closing)
                author = event.author
            out.write(event.text)
            out.flush()
        elif isinstance(event, Result):
            result = event
    if author == "llm":
        out.write(closing)
    out.write("\n")
    return result


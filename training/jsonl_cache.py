"""An append-only JSONL cache: one line per finished item, so a cut build keeps what it wrote.

Why a file of its own: the real pair's slow builds (the LLM's solving paths, the SLM's own
answers and the LLM's reads of them, R2R's branches) each spend minutes to an hour writing
items one at a time with llama.cpp. Each item is appended and flushed as soon as it is done,
and a build run again reads the file back and does only what is missing. A run killed in the
middle of a write leaves a cut last line: it is skipped on reading (that item is simply done
again), and the next append starts on a line of its own.
"""

from __future__ import annotations

import json
from pathlib import Path


class JsonlCache:
    """Rows (dicts) by `row[key]`, read from `path` and appended to it; `path` None: in memory only."""

    def __init__(self, path: str | Path | None, key: str = "key"):
        self.path = Path(path) if path is not None else None
        self.key = key
        self.rows: dict = {}
        self._out = None
        if self.path is not None and self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a write cut by a kill (or an empty line): that item is done again
                self.rows[row[key]] = row

    def __contains__(self, k) -> bool:
        return k in self.rows

    def __getitem__(self, k) -> dict:
        return self.rows[k]

    def add(self, row: dict) -> None:
        """Keep `row` and append it to the file at once (flushed: a kill after this keeps it)."""
        self.rows[row[self.key]] = row
        if self.path is None:
            return
        if self._out is None:
            cut = self.path.is_file() and self.path.stat().st_size > 0 and not self.path.read_bytes().endswith(b"\n")
            self._out = self.path.open("a")
            if cut:  # the last write was cut: its remains stay a line of their own
                self._out.write("\n")
        self._out.write(json.dumps(row) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None

    def __enter__(self) -> "JsonlCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

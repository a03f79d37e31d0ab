"""Privacy the user controls: local-only, a cloud budget per day, redaction, an audit log.

    from relayllm.edge.privacy import AuditLog, DailyBudget, Privacy, redact_personal
    privacy = Privacy(redact=redact_personal, budget=DailyBudget(2000, path="budget.json"),
                      audit=AuditLog("audit.jsonl", with_text=True))
    decoder = RelayDecoder(slm, cloud=client, privacy=privacy)

- local_only: nothing leaves the device (no session, no sync, no call); Result.local_only says so.
- DailyBudget: LLM tokens the cloud may write per calendar day (local time), across requests
  and, with `path`, across processes. The per-request budget is Limits.max_llm_tokens.
- redact: a callable str -> str applied to every text sent to the cloud. With a redactor
  the cloud is always sent text (token ids cannot carry the rewrite). `redact_personal` is
  the built-in one (off by default): e-mail addresses, phone numbers, long digit runs.
- AuditLog: one JSON line per call or sync: time, session, kind, size of what was sent
  (always), its exact text (with_text=True), and what came back. "What did the cloud see?"
  is the `sent_text` of the session's last line plus what came back before it.
Not here: where these apply (edge/link.py, the only way out of the device).
"""

from __future__ import annotations

import datetime as _dt
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"(?<!\w)\+?\d[\d ().-]{6,}\d(?!\w)")
_DIGITS = re.compile(r"\d{6,}")


def redact_personal(text: str) -> str:
    """Masks e-mail addresses, phone numbers and runs of 6+ digits ([email], [phone], [number])."""
    text = _EMAIL.sub("[email]", text)
    text = _DIGITS.sub("[number]", text)  # first: a bare run of digits is a number, not a phone
    return _PHONE.sub(lambda m: "[phone]" if sum(c.isdigit() for c in m.group()) >= 7 else m.group(), text)


class DailyBudget:
    """LLM tokens the cloud may write per day (None: no limit). Thread-safe; with `path` the
    day's count is kept in a small JSON file so that restarts do not reset it."""

    def __init__(self, tokens_per_day: int | None = None, *, path: str | Path | None = None):
        if tokens_per_day is not None and tokens_per_day < 0:
            raise ValueError(f"tokens_per_day must be >= 0 or None, got {tokens_per_day}")
        self.tokens_per_day = tokens_per_day
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._day, self._used = self._load()

    @staticmethod
    def today() -> str:
        return _dt.date.today().isoformat()

    def _load(self) -> tuple[str, int]:
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                return str(data["day"]), int(data["used"])
            except (ValueError, KeyError, TypeError):
                pass  # an unreadable file counts from zero rather than blocking the app
        return self.today(), 0

    def used(self) -> int:
        with self._lock:
            return self._used if self._day == self.today() else 0

    def allow(self, n: int) -> int:
        """How many of `n` tokens the rest of today's budget allows."""
        if self.tokens_per_day is None:
            return n
        return max(0, min(n, self.tokens_per_day - self.used()))

    def spend(self, n: int) -> None:
        with self._lock:
            if self._day != self.today():
                self._day, self._used = self.today(), 0
            self._used += int(n)
            if self.path:
                self.path.write_text(json.dumps({"day": self._day, "used": self._used}))


class AuditLog:
    """JSON lines: what left the device and what came back (see the module doc)."""

    def __init__(self, path: str | Path, *, with_text: bool = False):
        self.path = Path(path)
        self.with_text = with_text
        self._lock = threading.Lock()

    def sent(self, session: str, kind: str, context: dict, asked_tokens: int) -> dict:
        text = context.get("text")
        record = {"time": time.time(), "session": session, "kind": kind, "asked_tokens": asked_tokens}
        if text is not None:
            record["sent_chars"] = len(text)
            record["sent_bytes"] = len(text.encode("utf-8"))
        else:
            record["sent_tokens"] = len(context["tokens"])
        if self.with_text:
            record["sent_text"] = text
            if text is None:
                record["sent_token_ids"] = list(context["tokens"])
        return record

    def received(self, record: dict, tokens: int, text: str, error: str | None, done) -> None:
        record = dict(record, received_tokens=tokens, received_chars=len(text), error=error)
        if self.with_text:
            record["received_text"] = text
        if done is not None:  # what the cloud says it holds now: length and CRC-32
            record["cloud_holds_length"] = int(done.session_length)
            record["cloud_holds_crc32"] = int(done.session_crc32)
        line = json.dumps(record, ensure_ascii=False)
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line + "\n")

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass
class Privacy:
    """The user's privacy settings for a decoder (see the module doc)."""

    local_only: bool = field(default=False, metadata={"help": "nothing leaves the device"})
    budget: DailyBudget = field(default_factory=DailyBudget, metadata={"help": "LLM tokens per day"})
    redact: Callable[[str], str] | None = field(default=None, metadata={"help": "rewrites text sent to the cloud"})
    audit: AuditLog | None = field(default=None, metadata={"help": "JSONL record of what left the device"})

    def __post_init__(self):
        if self.redact is not None and not callable(self.redact):
            raise ValueError("Privacy.redact must be a callable str -> str (or None)")
        if not isinstance(self.budget, DailyBudget):
            raise ValueError("Privacy.budget must be a DailyBudget")

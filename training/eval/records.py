"""What an evaluation keeps: one record per question, one run per mode and setting.

A QuestionRecord is one question answered in one mode (the prompt as sent, the answer, who
wrote how many tokens, why it ended, whether it is right); a ModeRun is every question at
one setting, with the summary figures the report shows. They are saved as JSON
(training/eval/report.py) and read back to build the table.

LLM token ratio: LLM-written tokens (counted in the SLM's tokenizer, as the edge counts
them when it appends them to the SLM's context) / all response tokens, summed over the data
set -- not an average of per-question ratios.

Cost as users pay it (per record, summed or averaged per run): `cloud_prefilled` and
`cloud_generated` are the LLM tokens the cloud evaluated and wrote (its replies' usage, in
the cloud's tokenizer), `cloud_s` its compute seconds (usage.server_seconds), `cloud_wait_s`
the time the edge waited on its calls; device seconds = wall - cloud wait. `tally_stream`
reads them off the edge's event stream (training/eval/costs.py turns them into the table's
figures relative to the LLM alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from relayllm.training.data.benchmark import Example

Grader = Callable[[str, str], bool]  # (response, gold answer) -> correct
# How a mode is named in tables and logs where its key would overstate it: "query" sends a
# random share of whole questions to the LLM; no router learns which (training/eval/modes.py).
MODE_NAMES = {"query": "random query split", "relay-alone": "relay SLM alone (calls off)"}


@dataclass
class QuestionRecord:
    """One question answered in one mode: what was written, by whom, and whether it is right."""

    index: int
    question: str
    answer: str
    response: str
    correct: bool
    slm_tokens: int
    llm_tokens: int
    calls: int
    wall_s: float
    degraded: bool = False
    degraded_reasons: list[str] = field(default_factory=list)
    routed_to: str | None = None  # random query split: "llm" or "slm"
    prompt: str = ""  # the prompt as sent to the SLM (chat template applied, when one was)
    finish_reason: str = ""  # why the answer ended: "eos", "length" (the token budget), "context"
    cloud_prefilled: int = 0  # tokens the cloud evaluated for its calls (usage.prefilled_tokens)
    cloud_generated: int = 0  # tokens the cloud wrote (usage.generated_tokens, its tokenizer)
    cloud_s: float = 0.0  # the cloud's compute seconds for the calls (usage.server_seconds)
    cloud_wait_s: float = 0.0  # the edge's time waiting on its calls (call start to last LLM piece)

    @property
    def device_s(self) -> float:
        """Time the device worked on the answer: the wall time less the time it waited on the cloud."""
        return max(0.0, self.wall_s - self.cloud_wait_s)

    @property
    def empty(self) -> bool:
        return not self.response.strip()

    @property
    def cut(self) -> bool:
        """The answer stopped at the token budget (or the context), not at its end."""
        return self.finish_reason in ("length", "context")

    @property
    def tokens(self) -> int:
        return self.slm_tokens + self.llm_tokens


def llm_token_ratio(records: Iterable[QuestionRecord]) -> float:
    """LLM tokens / all response tokens, summed over the records (0 when nothing was written)."""
    llm = total = 0
    for r in records:
        llm += r.llm_tokens
        total += r.slm_tokens + r.llm_tokens
    return llm / total if total else 0.0


@dataclass
class ModeRun:
    """All questions in one mode at one setting (p, threshold or share for swept modes)."""

    mode: str
    setting: float | None
    records: list[QuestionRecord]
    wall_s: float
    setting_name: str | None = None  # "p", "threshold", "share"

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def accuracy(self) -> float:
        return sum(r.correct for r in self.records) / self.n if self.n else 0.0

    @property
    def llm_token_ratio(self) -> float:
        return llm_token_ratio(self.records)

    @property
    def slm_tokens(self) -> int:
        return sum(r.slm_tokens for r in self.records)

    @property
    def llm_tokens(self) -> int:
        return sum(r.llm_tokens for r in self.records)

    @property
    def tokens(self) -> int:
        return self.slm_tokens + self.llm_tokens

    @property
    def calls_per_question(self) -> float:
        return sum(r.calls for r in self.records) / self.n if self.n else 0.0

    def per_answer(self, attr: str) -> float:
        """The mean of a record attribute (cloud_prefilled, cloud_s, device_s, wall_s ...) per answer."""
        return sum(getattr(r, attr) for r in self.records) / self.n if self.n else 0.0

    @property
    def correct(self) -> int:
        return sum(r.correct for r in self.records)

    @property
    def degraded(self) -> int:
        return sum(r.degraded for r in self.records)

    @property
    def empty(self) -> int:
        return sum(r.empty for r in self.records)

    @property
    def cut(self) -> int:
        return sum(r.cut for r in self.records)

    def warnings(self) -> list[str]:
        """What a reader must know before trusting the accuracy: empty or cut answers."""
        out = []
        if self.empty:
            out.append(f"{self.label}: {self.empty}/{self.n} answers are empty (see each record's prompt and "
                       "finish_reason: an instruct model shown a raw question often ends at once)")
        if self.cut:
            out.append(f"{self.label}: {self.cut}/{self.n} answers were cut by the token budget or the context "
                       "(raise --max-tokens)")
        return out

    @property
    def label(self) -> str:
        name = MODE_NAMES.get(self.mode, self.mode)
        if self.setting is None:
            return name
        return f"{name} {self.setting_name or 'setting'}={self.setting:g}"

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "setting_name": self.setting_name,
            "setting": self.setting,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "llm_token_ratio": self.llm_token_ratio,
            "calls_per_question": self.calls_per_question,
            "slm_tokens": self.slm_tokens,
            "llm_tokens": self.llm_tokens,
            "tokens": self.tokens,
            "wall_s": self.wall_s,
            "degraded": self.degraded,
            "empty": self.empty,
            "cut": self.cut,
            "cloud_prefilled_per_answer": self.per_answer("cloud_prefilled"),
            "cloud_generated_per_answer": self.per_answer("cloud_generated"),
            "cloud_s_per_answer": self.per_answer("cloud_s"),
            "device_s_per_answer": self.per_answer("device_s"),
            "wall_s_per_answer": self.per_answer("wall_s"),
        }

    def to_dict(self) -> dict:
        return {**self.summary(), "records": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> "ModeRun":
        records = [QuestionRecord(**r) for r in d.get("records", [])]
        return cls(mode=d["mode"], setting=d.get("setting"), records=records, wall_s=float(d.get("wall_s", 0.0)),
                   setting_name=d.get("setting_name"))


@dataclass
class CloudUsage:
    """What one answer's cloud calls cost: the replies' usage summed, and the edge's wait on them."""

    prefilled: int = 0
    generated: int = 0
    server_s: float = 0.0
    wait_s: float = 0.0


def tally_stream(events, clock=None):
    """Consume a RelayDecoder event stream: (its Result, the CloudUsage of its calls).

    The wait on a call runs from its CallStarted to its last LLM piece (or to its
    CallFinished when none came): what follows the last piece is the device splicing the
    LLM's tokens into the SLM's context, device work.
    """
    import time

    from relayllm.edge.events import CallFinished, CallStarted, Result, TextPiece

    clock = clock or time.perf_counter
    usage, result = CloudUsage(), None
    call_start = last_piece = None
    for ev in events:
        now = clock()
        if isinstance(ev, CallStarted):
            call_start, last_piece = now, None
        elif isinstance(ev, TextPiece) and ev.author == "llm" and call_start is not None:
            last_piece = now
        elif isinstance(ev, CallFinished):
            if call_start is not None:
                usage.wait_s += (last_piece if last_piece is not None else now) - call_start
            call_start = None
            if ev.usage is not None:
                usage.prefilled += int(ev.usage.prefilled_tokens)
                usage.generated += int(ev.usage.generated_tokens)
                usage.server_s += float(ev.usage.server_seconds)
        elif isinstance(ev, Result):
            result = ev
    if result is None:
        raise RuntimeError("the decoder's stream ended without a Result")
    return result, usage


def record_from_result(index: int, example: Example, result, grader: Grader, wall_s: float,
                       prompt: str = "", usage: CloudUsage | None = None) -> QuestionRecord:
    """Turn the edge's Result into a graded record, reading its counters (`prompt`: as sent;
    `usage`: its calls' cost, from `tally_stream`)."""
    usage = usage or CloudUsage()
    text = result.text
    return QuestionRecord(
        index=index,
        question=example.question,
        answer=example.answer,
        response=text,
        correct=bool(grader(text, example.answer)),
        slm_tokens=int(result.slm_tokens),
        llm_tokens=int(result.llm_tokens),
        calls=int(result.calls),
        wall_s=float(getattr(result, "wall_s", wall_s) or wall_s),
        degraded=bool(getattr(result, "degraded", False)),
        degraded_reasons=[str(x) for x in (getattr(result, "degraded_reasons", None) or [])],
        prompt=prompt,
        finish_reason=str(getattr(result, "finish_reason", "") or ""),
        cloud_prefilled=usage.prefilled,
        cloud_generated=usage.generated,
        cloud_s=usage.server_s,
        cloud_wait_s=usage.wait_s,
    )

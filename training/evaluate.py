"""The evaluation harness: one table of accuracy and LLM token ratio for every mode.

Modes (all decode through the edge SDK's RelayDecoder, so every mode shares the code path,
the Help RPC, the fallback and the counters):
- slm:        the SLM alone, no cloud;
- llm:        the LLM alone: a router that hands the LLM every token through the cloud;
- relay:      the relay SLM (taught to write `<call>N</call>`) with the cloud;
- random:     a random token router sending a share p of tokens to the LLM (a sweep over p
              gives a curve; the demo includes relay's own ratio);
- query:      a query-level router sending a random share of whole questions to the LLM
              (decoding is greedy, so a routed question's answer *is* the llm mode's answer
              and an unrouted one the slm mode's: the records are reused, not recomputed);
- confidence: a token goes to the LLM when the SLM's top probability is below a threshold;
- r2r, citer: a learned ONNX token router (edge/token_router.py) fires when its p_llm is at
              or above a threshold (a curve over thresholds).

LLM token ratio, as in the brief: LLM-written tokens (counted in the SLM's tokenizer, as the
edge counts them when it appends them to the SLM's context) / all response tokens, summed
over the data set -- not an average of per-question ratios.

Outputs in a folder: `<mode>.json` per mode (summary + per-question records), and from all
mode files found there, `results.md` (the table) and `accuracy_vs_llm_ratio.png`.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

MODES = ("slm", "llm", "relay", "random", "query", "confidence", "r2r", "citer")
SWEPT_MODES = ("random", "query", "confidence", "r2r", "citer")
LEARNED_ROUTER_MODES = ("r2r", "citer")  # ONNX routers from training (edge/token_router.py)
PLOT_FILE = "accuracy_vs_llm_ratio.png"
TABLE_FILE = "results.md"


class EvalError(ValueError):
    """A problem with the evaluation's input a person can fix (bad file, bad option)."""


# ---------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class Example:
    question: str
    answer: str


def load_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    """Read a JSONL benchmark with `question` and `answer` fields; readable errors on bad lines."""
    path = Path(path)
    if not path.is_file():
        raise EvalError(f"data file not found: {path}")
    examples: list[Example] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise EvalError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "question" not in row or "answer" not in row:
                raise EvalError(f"{path}:{line_no}: each line needs a 'question' and an 'answer' field")
            examples.append(Example(str(row["question"]), str(row["answer"])))
            if limit is not None and len(examples) >= limit:
                break
    if not examples:
        raise EvalError(f"{path}: no examples")
    return examples


# ---------------------------------------------------------------------------------------
# Records and runs


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
    routed_to: str | None = None  # query router: "llm" or "slm"

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

    @property
    def degraded(self) -> int:
        return sum(r.degraded for r in self.records)

    @property
    def label(self) -> str:
        if self.setting is None:
            return self.mode
        return f"{self.mode} {self.setting_name or 'setting'}={self.setting:g}"

    def summary(self) -> dict:
        return {
            "mode": self.mode,
            "setting_name": self.setting_name,
            "setting": self.setting,
            "n": self.n,
            "accuracy": self.accuracy,
            "llm_token_ratio": self.llm_token_ratio,
            "calls_per_question": self.calls_per_question,
            "slm_tokens": self.slm_tokens,
            "llm_tokens": self.llm_tokens,
            "tokens": self.tokens,
            "wall_s": self.wall_s,
            "degraded": self.degraded,
        }

    def to_dict(self) -> dict:
        return {**self.summary(), "records": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> "ModeRun":
        records = [QuestionRecord(**r) for r in d.get("records", [])]
        return cls(mode=d["mode"], setting=d.get("setting"), records=records, wall_s=float(d.get("wall_s", 0.0)),
                   setting_name=d.get("setting_name"))


# ---------------------------------------------------------------------------------------
# Grading


Grader = Callable[[str, str], bool]  # (response, gold answer) -> correct


def make_grader(kind: str) -> Grader:
    """`exact` for the built-in task, `math` (math-verify, boxed / final number) for math benchmarks."""
    if kind == "exact":
        from relayllm.training import task

        return task.grade
    if kind == "math":
        from relayllm.training import grading

        return grading.grade
    raise EvalError(f"unknown grader {kind!r}: choose 'exact' or 'math'")


# ---------------------------------------------------------------------------------------
# Running a mode


def record_from_result(index: int, example: Example, result, grader: Grader, wall_s: float) -> QuestionRecord:
    """Turn the edge's Result into a graded record, reading its counters."""
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
    )


def run_mode(examples: Sequence[Example], answer: Callable[[str], object], grader: Grader, *, mode: str,
             setting: float | None = None, setting_name: str | None = None, progress: bool = True,
             before_each: Callable[[int], None] | None = None) -> ModeRun:
    """Answer every example with `answer(question) -> Result` and grade it."""
    from tqdm.auto import tqdm

    desc = mode if setting is None else f"{mode} {setting_name}={setting:g}"
    records: list[QuestionRecord] = []
    start = time.perf_counter()
    for i, ex in enumerate(tqdm(examples, desc=desc, unit="q", disable=not progress, leave=False)):
        if before_each is not None:
            before_each(i)
        t0 = time.perf_counter()
        result = answer(ex.question)
        records.append(record_from_result(i, ex, result, grader, time.perf_counter() - t0))
    return ModeRun(mode=mode, setting=setting, setting_name=setting_name, records=records,
                   wall_s=time.perf_counter() - start)


def query_router_run(slm_run: ModeRun, llm_run: ModeRun, share: float, seed: int = 0) -> ModeRun:
    """A query-level router sending a random `share` of whole questions to the LLM.

    Decoding is greedy, so a question sent to the LLM gets exactly the llm mode's answer and
    one kept on the device the slm mode's: the router's records are those, picked per
    question. Exactly round(share * n) questions go to the LLM, chosen at random by `seed`.
    """
    if slm_run.n != llm_run.n:
        raise EvalError("query router: slm and llm runs must cover the same questions")
    if not 0.0 <= share <= 1.0:
        raise EvalError(f"query router: share must be in [0, 1], got {share}")
    n = slm_run.n
    to_llm = set(random.Random(seed).sample(range(n), round(share * n)))
    records = []
    for i in range(n):
        src = llm_run.records[i] if i in to_llm else slm_run.records[i]
        records.append(QuestionRecord(**{**asdict(src), "routed_to": "llm" if i in to_llm else "slm"}))
    wall = sum(r.wall_s for r in records)
    return ModeRun(mode="query", setting=share, setting_name="share", records=records, wall_s=wall)


# ---------------------------------------------------------------------------------------
# Headline figures


def gap_recovered(slm_accuracy: float, relay_accuracy: float, llm_accuracy: float) -> float | None:
    """(relay - slm) / (llm - slm); None when the LLM is no better than the SLM (no gap to recover)."""
    gap = llm_accuracy - slm_accuracy
    if gap <= 0:
        return None
    return (relay_accuracy - slm_accuracy) / gap


def ratio_at_accuracy(curve: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """Smallest LLM token ratio at which the piecewise-linear curve [(ratio, accuracy)] reaches `accuracy`.

    Points are taken in order of ratio; None when no point reaches it.
    """
    pts = sorted((float(r), float(a)) for r, a in curve)
    if not pts:
        return None
    if pts[0][1] >= accuracy:
        return pts[0][0]
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        if a1 >= accuracy > a0:
            return r0 + (accuracy - a0) * (r1 - r0) / (a1 - a0)
    return None


@dataclass
class CostSaved:
    """Cost saved by relay against the random router at relay's accuracy."""

    random_ratio: float | None  # random router's LLM token ratio at relay's accuracy (None: not reached)
    saved: float | None         # 1 - relay_ratio / random_ratio
    note: str                   # human-readable

    def to_dict(self) -> dict:
        return asdict(self)


def cost_saved_vs_random(relay: ModeRun, random_runs: Sequence[ModeRun], slm: ModeRun | None = None,
                         llm: ModeRun | None = None) -> CostSaved:
    """Interpolate the random router's curve to relay's accuracy; saved = 1 - relay_ratio / random_ratio.

    The random router at p=0 is the SLM alone and at p=1 the LLM alone, so those runs (when
    given, and on the same SLM) close the curve at both ends.
    """
    curve = [(r.llm_token_ratio, r.accuracy) for r in random_runs]
    if slm is not None:
        curve.append((0.0, slm.accuracy))
    if llm is not None:
        curve.append((1.0, llm.accuracy))
    at = ratio_at_accuracy(curve, relay.accuracy)
    if at is None:
        return CostSaved(None, None, f"not reached (the random router never reaches {relay.accuracy:.1%})")
    if at <= 0:
        return CostSaved(at, None, "n/a (the SLM alone already reaches relay's accuracy)")
    saved = 1.0 - relay.llm_token_ratio / at
    return CostSaved(at, saved, f"{saved:.1%} (random router needs {at:.2%} LLM tokens for {relay.accuracy:.1%})")


# ---------------------------------------------------------------------------------------
# Output: JSON per mode, markdown table, plot


def write_mode_json(out_dir: str | Path, mode: str, runs: Sequence[ModeRun], meta: dict | None = None) -> Path:
    """`<out_dir>/<mode>.json`: every run of the mode, summary and per-question records."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{mode}.json"
    payload = {"mode": mode, "meta": meta or {}, "runs": [r.to_dict() for r in runs]}
    path.write_text(json.dumps(payload, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def read_runs(out_dir: str | Path) -> list[ModeRun]:
    """Every run saved in `<out_dir>/<mode>.json` files, in the order of MODES, then others."""
    out = Path(out_dir)
    files = sorted(out.glob("*.json"), key=lambda p: (MODES.index(p.stem) if p.stem in MODES else len(MODES), p.stem))
    runs: list[ModeRun] = []
    for path in files:
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(payload, dict) or "runs" not in payload or "mode" not in payload:
            continue  # summary.json or a file that is not ours
        runs.extend(ModeRun.from_dict(d) for d in payload["runs"])
    return runs


TABLE_HEADER = ("mode", "accuracy", "LLM token ratio", "calls/question", "tokens (slm + llm)", "wall time")


def table_rows(runs: Sequence[ModeRun]) -> list[tuple[str, ...]]:
    rows = []
    for r in runs:
        rows.append((
            r.label,
            f"{r.accuracy:.1%} ({sum(x.correct for x in r.records)}/{r.n})",
            f"{r.llm_token_ratio:.2%}",
            f"{r.calls_per_question:.2f}",
            f"{r.tokens} ({r.slm_tokens} + {r.llm_tokens})",
            f"{r.wall_s:.1f} s",
        ))
    return rows


def markdown_table(runs: Sequence[ModeRun]) -> str:
    rows = [TABLE_HEADER, *table_rows(runs)]
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "|".join("---" for _ in rows[0]) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]
    return "\n".join(lines) + "\n"


def text_table(runs: Sequence[ModeRun]) -> str:
    """The same table, aligned for a terminal."""
    rows = [TABLE_HEADER, *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE_HEADER))]
    fmt = lambda row: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(rows[0]), "  ".join("-" * w for w in widths), *map(fmt, rows[1:])]) + "\n"


def plot_points(runs: Sequence[ModeRun]) -> dict[str, list[tuple[float, float]]]:
    points: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        points.setdefault(r.mode, []).append((r.llm_token_ratio, r.accuracy))
    return points


def write_report(out_dir: str | Path, runs: Sequence[ModeRun] | None = None, headline: str = "") -> tuple[Path, Path]:
    """`results.md` (the table, plus `headline` lines) and the PNG plot, for `runs` or all runs in the folder."""
    from relayllm.training.plots import plot_accuracy_vs_ratio

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = list(runs) if runs is not None else read_runs(out)
    md = "# relayllm evaluation\n\n" + markdown_table(runs)
    if headline:
        md += "\n" + headline.rstrip() + "\n"
    md += f"\n![accuracy vs LLM token ratio]({PLOT_FILE})\n"
    table_path = out / TABLE_FILE
    table_path.write_text(md, encoding="utf-8")
    plot_path = plot_accuracy_vs_ratio(plot_points(runs), out / PLOT_FILE)
    return table_path, plot_path


def fmt_fraction(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1%}"


# ---------------------------------------------------------------------------------------
# Answering questions through the edge SDK


# The relay SLM starts a command when its probability of `<call>` reaches this (see
# RelayDecoder's call_threshold); the default models' relay SLM is measured around it.
DEFAULT_CALL_THRESHOLD = 0.1


class Evaluator:
    """Answers questions in every mode through the edge SDK's RelayDecoder.

    Each GGUF is loaded once and shared by the modes that use it; one CloudClient serves
    every mode that needs the LLM. `prompt(question)` turns a question into what the SLM
    sees (the built-in task's own prompt format by default).
    """

    def __init__(self, *, cloud_target: str | None, grader: Grader, prompt: Callable[[str], str] | None = None,
                 max_tokens: int = 256, max_calls: int = 4, seed: int = 0, progress: bool = True,
                 n_ctx: int = 2048):
        self.cloud_target = cloud_target
        self.grader = grader
        self.prompt = prompt or (lambda q: q)
        self.max_tokens = max_tokens
        self.max_calls = max_calls
        self.seed = seed
        self.progress = progress
        self.n_ctx = n_ctx
        self._models: dict[str, object] = {}
        self._client = None

    # -- parts --------------------------------------------------------------------------
    def client(self):
        if self.cloud_target is None:
            raise EvalError("this mode needs the LLM: give --llm GGUF or --cloud HOST:PORT")
        if self._client is None:
            from relayllm.edge.client import CloudClient

            self._client = CloudClient(self.cloud_target)
        return self._client

    def model(self, gguf: str | Path, *, embedding: bool = False):
        """A llama.cpp model for `gguf`, loaded once (`embedding=True`: it also hands out hidden states)."""
        path = str(Path(gguf).resolve())
        key = (path, embedding)
        if key not in self._models:
            if not Path(gguf).is_file():
                raise EvalError(f"model not found: {gguf}")
            from relayllm.edge.models import quiet_llama

            self._models[key] = quiet_llama(model_path=path, n_ctx=self.n_ctx, embedding=embedding)
        return self._models[key]

    def decoder(self, slm, *, cloud: bool, router=None, max_calls: int | None = None,
                call_threshold: float | None = None):
        """A RelayDecoder on `slm` (a GGUF path or an already loaded Llama)."""
        from relayllm.edge import Limits, RelayDecoder

        limits = Limits(max_calls=self.max_calls if max_calls is None else max_calls,
                        max_total_tokens=self.max_tokens, max_llm_tokens=self.max_tokens)
        llama = slm if hasattr(slm, "tokenize") else self.model(slm)
        return RelayDecoder(llama, cloud=self.client() if cloud else None, limits=limits,
                            router=router, sampling=greedy_sampling(), call_threshold=call_threshold)

    def close(self):
        if self._client is not None and hasattr(self._client, "close"):
            self._client.close()
        self._client = None
        for m in self._models.values():
            if hasattr(m, "close"):
                m.close()
        self._models.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- modes --------------------------------------------------------------------------
    def _run(self, examples, decoder, mode, setting=None, setting_name=None, before_each=None) -> ModeRun:
        return run_mode(examples, lambda q: decoder.generate(self.prompt(q)), self.grader, mode=mode,
                        setting=setting, setting_name=setting_name, progress=self.progress,
                        before_each=before_each)

    def run_slm(self, examples, slm) -> ModeRun:
        return self._run(examples, self.decoder(slm, cloud=False, max_calls=0), "slm")

    def run_llm(self, examples, slm) -> ModeRun:
        """The LLM writes every token, through the cloud; tokens counted in the SLM's tokenizer."""
        router = AlwaysLLM(self.max_tokens)
        return self._run(examples, self.decoder(slm, cloud=True, router=router, max_calls=self.max_tokens), "llm")

    def run_relay(self, examples, relay_slm, call_threshold: float | None = DEFAULT_CALL_THRESHOLD) -> ModeRun:
        """The relay SLM decides when to call; `call_threshold` (see RelayDecoder) is its
        knob between accuracy and LLM share, None = greedy alone decides."""
        try:
            dec = self.decoder(relay_slm, cloud=True, call_threshold=call_threshold)
        except ValueError as exc:  # not a relay SLM
            raise EvalError(str(exc)) from None
        if call_threshold is None:
            return self._run(examples, dec, "relay")
        return self._run(examples, dec, "relay", call_threshold, "call_threshold")

    def run_random(self, examples, slm, p: float) -> ModeRun:
        from relayllm.edge.routers import RandomRouter

        router = RandomRouter(p, seed=self.seed)

        def fresh_router(i):  # one random stream per question: its routing does not depend on order
            router.reseed(self.seed * 100_003 + i)

        dec = self.decoder(slm, cloud=True, router=router, max_calls=self.max_tokens)
        return self._run(examples, dec, "random", p, "p", before_each=fresh_router)

    def run_confidence(self, examples, slm, threshold: float) -> ModeRun:
        from relayllm.edge.routers import ConfidenceRouter

        dec = self.decoder(slm, cloud=True, router=ConfidenceRouter(threshold), max_calls=self.max_tokens)
        return self._run(examples, dec, "confidence", threshold, "threshold")

    def run_learned_router(self, examples, slm, router_file: str | Path, threshold: float, mode: str) -> ModeRun:
        """R2R or CITER: an ONNX router reading the SLM's own signals (hidden state included)."""
        from relayllm.edge.token_router import RouterError, TokenRouter

        llama = self.model(slm, embedding=True)
        try:
            router = TokenRouter(router_file, threshold, llama=llama)
        except RouterError as exc:
            raise EvalError(str(exc)) from None
        dec = self.decoder(llama, cloud=True, router=router, max_calls=self.max_tokens)
        return self._run(examples, dec, mode, threshold, "threshold")

    def run_query(self, slm_run: ModeRun, llm_run: ModeRun, share: float) -> ModeRun:
        return query_router_run(slm_run, llm_run, share, seed=self.seed)


def AlwaysLLM(max_tokens: int):
    from relayllm.edge.routers import AlwaysLLMRouter

    return AlwaysLLMRouter(run=max_tokens)


def greedy_sampling():
    """Greedy decoding on the SLM and the LLM: every mode is deterministic but for its router."""
    from relayllm.edge import Sampling

    return Sampling(temperature=0.0)


# ---------------------------------------------------------------------------------------
# The built-in task and a cloud on loopback


def builtin_examples(limit: int | None = None) -> list[Example]:
    """The built-in task's held-out split as Examples."""
    from relayllm.training import task

    rows = task.test_split()
    examples = [Example(str(r.question), str(r.answer)) for r in rows]
    return examples[:limit] if limit is not None else examples


def builtin_prompt() -> Callable[[str], str]:
    """How the built-in task shows a question to the models (the format they were trained on)."""
    from relayllm.training import task

    return task.format_prompt


class local_cloud:
    """A cloud service on loopback serving `llm_gguf` with llama.cpp: `with local_cloud(p) as target: ...`."""

    def __init__(self, llm_gguf: str | Path):
        if not Path(llm_gguf).is_file():
            raise EvalError(f"LLM model not found: {llm_gguf}")
        self.llm_gguf = str(llm_gguf)
        self._server = None

    def __enter__(self) -> str:
        from relayllm.cloud.backends.llamacpp import LlamaCppBackend
        from relayllm.cloud.harness import ServerThread

        self._server = ServerThread(LlamaCppBackend(self.llm_gguf))
        self._server.__enter__()
        return self._server.target

    def __exit__(self, *exc):
        if self._server is not None:
            self._server.__exit__(*exc)
            self._server = None

"""Answering questions in every mode through the edge SDK, and a cloud on loopback.

The Evaluator loads each GGUF once, opens one CloudClient for every mode that needs the LLM,
and answers a list of Examples with a RelayDecoder configured for the mode (the modes:
training/eval/modes.py); `run_mode` grades each answer into a record
(training/eval/records.py). `local_cloud` serves an LLM GGUF with the project's own cloud
service on loopback for one run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from relayllm.training.data.benchmark import Example
from relayllm.training.data.prompts import gguf_has_chat_template, user_message
from relayllm.training.errors import EvalError
from relayllm.training.eval.journal import Budget, Journal
from relayllm.training.eval.modes import DEFAULT_CALL_THRESHOLD
from relayllm.training.eval.records import Grader, ModeRun, QuestionRecord, record_from_result, tally_stream


def run_mode(examples: Sequence[Example], answer: Callable[[str], object], grader: Grader, *, mode: str,
             setting: float | None = None, setting_name: str | None = None, progress: bool = True,
             before_each: Callable[[int], None] | None = None,
             prompt_of: Callable[[str], str] | None = None, journal: Journal | None = None,
             budget: Budget | None = None) -> ModeRun:
    """Answer every example with `answer(question)` and grade it; `answer` returns the Result,
    or (Result, CloudUsage) when it tallied its calls' cost; `prompt_of(question)` is the prompt
    as sent, kept in the record. With a `journal`, each record is appended as it is made and
    questions already there are not answered again (training/eval/journal.py); a `budget`
    stops between two questions (BudgetReached) with the records kept."""
    from tqdm.auto import tqdm

    desc = mode if setting is None else f"{mode} {setting_name}={setting:g}"
    done = journal.done() if journal is not None else {}
    records: list[QuestionRecord] = []
    resumed_s = 0.0  # the wall time of answers read back from the journal
    start = time.perf_counter()
    bar = tqdm(total=len(examples), desc=desc, unit="q", disable=not progress, leave=False)
    with bar:
        for i, ex in enumerate(examples):
            old = done.get((i, ex.question))
            if old is not None:
                records.append(old)
                resumed_s += old.wall_s
                bar.update(1)
                continue
            if budget is not None:
                budget.check(len(records), len(examples), desc)
            if before_each is not None:
                before_each(i)
            t0 = time.perf_counter()
            result, usage = answer(ex.question), None
            if isinstance(result, tuple):
                result, usage = result
            record = record_from_result(i, ex, result, grader, time.perf_counter() - t0,
                                        prompt_of(ex.question) if prompt_of else "", usage)
            if journal is not None:
                journal.append(record)
            records.append(record)
            bar.update(1)
    return ModeRun(mode=mode, setting=setting, setting_name=setting_name, records=records,
                   wall_s=time.perf_counter() - start + resumed_s)


class Evaluator:
    """Answers questions in every mode through the edge SDK's RelayDecoder.

    Each GGUF is loaded once and shared by the modes that use it; one CloudClient serves
    every mode that needs the LLM. How a question is shown (training/data/prompts.py):
    `prompt(question)` is the raw format (the question itself by default; the built-in
    task's own format for it); with an `instruction` (a str, "" for none), an SLM whose GGUF
    has a chat template gets the question and the instruction as one user turn through that
    template instead. Each record keeps the prompt as sent.
    """

    def __init__(self, *, cloud_target: str | None, grader: Grader, prompt: Callable[[str], str] | None = None,
                 instruction: str | None = None, max_tokens: int = 256, max_calls: int = 4, seed: int = 0,
                 progress: bool = True, n_ctx: int = 2048, journal_dir: str | Path | None = None,
                 journal_key: dict | None = None, journal_files: dict | None = None, budget: Budget | None = None,
                 deadline_s: float = 120.0):
        self.cloud_target = cloud_target
        # per cloud call: the harness measures answers, not latency, and an llm-mode call of
        # 256 tokens from a 1.5B on 2 CPU cores takes ~15 s (an app's default is 10 s)
        self.deadline_s = float(deadline_s)
        # resumable runs: records appended under journal_dir, in files keyed by journal_key
        # (what decides the answers beyond the mode: the models, the data), and a time budget
        self.journal_dir = journal_dir
        self.journal_key = dict(journal_key or {})
        self.journal_files = dict(journal_files or {})  # role -> model file (the LLM's), fingerprinted
        self.budget = budget
        self.grader = grader
        self.prompt = prompt or (lambda q: q)
        self.instruction = instruction
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

            self._client = CloudClient(self.cloud_target, deadline_s=self.deadline_s)
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
                call_threshold: float | None = None, command_context: str | None = None):
        """A RelayDecoder on `slm` (a GGUF path or an already loaded Llama)."""
        from relayllm.edge import Limits, RelayDecoder

        limits = Limits(max_calls=self.max_calls if max_calls is None else max_calls,
                        max_total_tokens=self.max_tokens, max_llm_tokens=self.max_tokens)
        llama = slm if hasattr(slm, "tokenize") else self.model(slm)
        chat = self.instruction is not None and gguf_has_chat_template(llama)
        return RelayDecoder(llama, cloud=self.client() if cloud else None, limits=limits, router=router,
                            sampling=greedy_sampling(), call_threshold=call_threshold, chat=chat, n_ctx=self.n_ctx,
                            command_context=command_context, deadline_s=self.deadline_s)

    def text_for(self, decoder, question: str) -> str:
        """What the decoder is given for `question` (before its chat template, when it applies one)."""
        return user_message(question, self.instruction) if decoder.chat_template else self.prompt(question)

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
    def journal(self, mode: str, setting=None, **extra) -> Journal | None:
        """The records file of one run (None without a journal_dir). The models in `extra`
        (slm, router: paths or loaded Llamas) are keyed by file name and fingerprinted."""
        if self.journal_dir is None:
            return None
        files = dict(self.journal_files)
        for role in ("slm", "router"):
            if role in extra:
                files[role] = model_file(extra[role])
                extra[role] = files[role].name
        key = {**self.journal_key, "mode": mode, "setting": setting, "max_tokens": self.max_tokens,
               "max_calls": self.max_calls, "instruction": self.instruction, "seed": self.seed, **extra}
        return Journal(self.journal_dir, key, files=files)

    def _run(self, examples, decoder, mode, setting=None, setting_name=None, before_each=None, **key) -> ModeRun:
        return run_mode(examples, lambda q: tally_stream(decoder.stream(self.text_for(decoder, q))), self.grader, mode=mode,
                        setting=setting, setting_name=setting_name, progress=self.progress,
                        before_each=before_each, prompt_of=lambda q: decoder.prompt_text(self.text_for(decoder, q)),
                        journal=self.journal(mode, setting, **key),
                        budget=self.budget)

    def run_slm(self, examples, slm) -> ModeRun:
        return self._run(examples, self.decoder(slm, cloud=False, max_calls=0), "slm", slm=slm)

    def run_llm(self, examples, slm) -> ModeRun:
        """The LLM writes every token, through the cloud; tokens counted in the SLM's tokenizer."""
        router = AlwaysLLM(self.max_tokens)
        return self._run(examples, self.decoder(slm, cloud=True, router=router, max_calls=self.max_tokens), "llm",
                         slm=slm)

    def run_relay(self, examples, relay_slm, call_threshold: float | None = DEFAULT_CALL_THRESHOLD,
                  command_context: str | None = None) -> ModeRun:
        """The relay SLM writes `<call>N</call>` itself (the paper's protocol); `call_threshold`
        (see RelayDecoder) calibrates how often it starts one, None = its own greedy choice
        alone. `command_context`: "keep" (the paper's) or "drop" (docs/relay-protocol.md); None:
        what the SLM's GGUF records, else keep."""
        try:
            dec = self.decoder(relay_slm, cloud=True, call_threshold=call_threshold, command_context=command_context)
        except ValueError as exc:  # not a relay SLM
            raise EvalError(str(exc)) from None
        key = {"slm": relay_slm, "command_context": dec.command_context}
        if call_threshold is None:
            return self._run(examples, dec, "relay", **key)
        return self._run(examples, dec, "relay", call_threshold, "call_threshold", **key)

    def run_relay_alone(self, examples, relay_slm) -> ModeRun:
        """The relay SLM with no cloud: what its fine-tuning alone does to the SLM (a command it
        writes gets nothing and it goes on), told apart from what its calls add."""
        return self._run(examples, self.decoder(relay_slm, cloud=False, max_calls=0), "relay-alone",
                         slm=relay_slm)

    def run_random(self, examples, slm, p: float) -> ModeRun:
        from relayllm.edge.routers import RandomRouter

        router = RandomRouter(p, seed=self.seed)

        def fresh_router(i):  # one random stream per question: its routing does not depend on order
            router.reseed(self.seed * 100_003 + i)

        dec = self.decoder(slm, cloud=True, router=router, max_calls=self.max_tokens)
        return self._run(examples, dec, "random", p, "p", before_each=fresh_router, slm=slm)

    def run_confidence(self, examples, slm, threshold: float) -> ModeRun:
        from relayllm.edge.routers import ConfidenceRouter

        dec = self.decoder(slm, cloud=True, router=ConfidenceRouter(threshold), max_calls=self.max_tokens)
        return self._run(examples, dec, "confidence", threshold, "threshold", slm=slm)

    def run_learned_router(self, examples, slm, router_file: str | Path, threshold: float, mode: str) -> ModeRun:
        """R2R or CITER: an ONNX router reading the SLM's own signals (hidden state included)."""
        from relayllm.edge.token_router import RouterError, TokenRouter

        llama = self.model(slm, embedding=True)
        try:
            router = TokenRouter(router_file, threshold, llama=llama)
        except RouterError as exc:
            raise EvalError(str(exc)) from None
        dec = self.decoder(llama, cloud=True, router=router, max_calls=self.max_tokens)
        return self._run(examples, dec, mode, threshold, "threshold", slm=slm, router=router_file)

    def run_query(self, slm_run: ModeRun, llm_run: ModeRun, share: float) -> ModeRun:
        from relayllm.training.eval.modes import random_query_split_run

        return random_query_split_run(slm_run, llm_run, share, seed=self.seed)


def model_file(model) -> Path:
    """A model's file (a loaded Llama: its model_path); journals key it by the file's name."""
    return Path(str(getattr(model, "model_path", model)))


def AlwaysLLM(max_tokens: int):
    from relayllm.edge.routers import AlwaysLLMRouter

    return AlwaysLLMRouter(run=max_tokens)


def greedy_sampling():
    """Greedy decoding on the SLM and the LLM: every mode is deterministic but for its router."""
    from relayllm.edge import Sampling

    return Sampling(temperature=0.0)


class local_cloud:
    """A cloud service on loopback serving `llm_gguf`: `with local_cloud(p) as target: ...`.

    It is `relayllm serve` (llama.cpp, a context per session) in a process of its own, as a
    real cloud is: the SLM's llama.cpp and the LLM's never compute from two threads of one
    process (on 2 cores that slowed a llama.cpp step by half, training/bench/fresh_process.py),
    and the server's gRPC and event loop do not share the evaluation's GIL.
    """

    START_S = 120.0  # loading a 1 GB GGUF on a busy 2-core machine

    def __init__(self, llm_gguf: str | Path):
        if not Path(llm_gguf).is_file():
            raise EvalError(f"LLM model not found: {llm_gguf}")
        self.llm_gguf = str(llm_gguf)
        self._process = None
        self._log = None

    def __enter__(self) -> str:
        import os
        import subprocess
        import sys
        import tempfile
        import threading

        argv = [sys.executable, "-m", "relayllm.protos.cli", "serve", "--model", self.llm_gguf, "--port", "0",
                "--backend", "llama.cpp-contexts", "--log-level", "WARNING"]
        self._log = tempfile.TemporaryFile(mode="w+")  # the server's stderr, shown if it fails to start
        from relayllm.cloud.settings import SERVE_KEYS, SERVER_KEYS

        # a private loopback server: none of the user's `relayllm serve` settings from the
        # environment (tokens, TLS, a port, a config file) apply to it
        own = {f"RELAYLLM_{k.upper()}" for k in SERVE_KEYS + SERVER_KEYS} | {"RELAYLLM_TOKENS", "RELAYLLM_CONFIG"}
        env = {k: v for k, v in os.environ.items() if k not in own}
        self._process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                         env={**env, "PYTHONUNBUFFERED": "1"})
        lines: list[str] = []  # the first line says where it listens (read with a time limit)
        reader = threading.Thread(target=lambda: lines.append(self._process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(self.START_S)
        line = lines[0] if lines else ""
        if "listening on " not in line:
            self._stop()
            why = self._stderr_tail() or line.strip() or f"no answer in {self.START_S:g} s"
            self.__exit__(None, None, None)
            raise EvalError(f"the cloud on loopback did not start for {self.llm_gguf}: {why}")
        return line.split("listening on ")[1].split()[0]

    def _stderr_tail(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        lines = self._log.read().strip().splitlines()
        return lines[-1] if lines else ""  # `relayllm serve` says why in its last line

    def _stop(self) -> None:
        import signal
        import subprocess

        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGINT)  # drains and stops
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()

    def __exit__(self, *exc):
        if self._process is not None:
            self._stop()
            self._process.stdout.close()
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

"""The configs of `relayllm train`: one dataclass per stage (warm-up, GRPO, export) and the
run's own (models, data, output), loaded from TOML or JSON.

Every field has a `help` (printed by `relayllm train --show-config`) and is checked where it
is made (`__post_init__`), so a bad value fails before any model is loaded, with a message
that says which key and why. Unknown keys and values of the wrong type are refused by
`load_train_config` the same way. The stage functions take these configs
(training/relay/warmup.py run_warmup, grpo.py run_grpo, models/export.py export).

    slm = "HuggingFaceTB/SmolLM2-135M-Instruct"   # HF folder or GGUF file
    llm = "grpc://127.0.0.1:50051"                # HF folder, GGUF file, or a running cloud
    out = "runs/relay"
    data = "gsm8k/train.jsonl"                    # questions and answers (default: built-in task)
    [warmup]
    steps = 80
    [grpo]
    steps = 20
    [export]
    quants = ["q8_0"]
"""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from relayllm.protos.protocol import COMMAND_CONTEXTS, EVAL_LIMITS, TRAIN_LIMITS
from relayllm.training.data.prompts import DEFAULT_INSTRUCTION
from relayllm.training.errors import TrainingError
from relayllm.training.relay.rewards import REWARDS as REWARD_KINDS

STAGES = ("warmup", "grpo", "export")
OWN_STRATEGIES = ("own", "own-handoff")  # rows from the SLM's own answers (training/relay/own_path.py)
WARMUP_STRATEGIES = ("random", "guided", *OWN_STRATEGIES)
QUANTS = ("q8_0", "q4_k_m", "q4_0", "q5_k_m", "q6_k")


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


def _need(ok: bool, where: str, msg: str) -> None:
    if not ok:
        raise TrainingError(f"[{where}] {msg}")


def _rows_ok(rows, where: str) -> None:
    for i, row in enumerate(rows or ()):
        _need(isinstance(row, dict) and set(row) == {"prompt", "answer"}, where,
              f"rows[{i}] must have exactly 'prompt' and 'answer', got {row!r}")


CALL_AT = ("any", "numbers")  # WarmupConfig.call_at
N_RULES = ("recover", "line", "fixed")  # WarmupConfig.n_rule


@dataclass
class WarmupConfig:
    """SFT that teaches the SLM the command `<call>N</call>` (training/relay/warmup.py)."""

    input: str | None = _f(None, "the SLM to warm up (default: the run's `slm`)")
    n_examples: int = _f(1024, "questions to build warm-up rows from")
    rows: list[dict] | None = _f(None, "inline questions instead of `data`: [{prompt, answer}], the prompt as "
                                       "the model sees it, graded as the built-in task")
    strategy: str = _f("guided", "'guided': commands where the SLM departs from the LLM's path; "
                                 "'random': the paper's, commands at random positions of the SLM's own solutions; "
                                 "'own': a command where the SLM's own answer first goes wrong on a number, "
                                 "the LLM writes on; 'own-handoff': the same command, the LLM writes its line and "
                                 "the SLM writes on, up to max_calls commands (training/relay/own_path.py; both "
                                 "GGUF files)")
    n_call: int = _f(8, "N in the taught command at most (n_rule 'fixed': always)")
    n_rule: str = _f("recover", "'recover': N = the LLM span that brings the SLM back onto the LLM's path; "
                                "'line': N = the rest of the LLM's line from the divergence (through its "
                                "newline); 'fixed': N = n_call; each at most n_call")
    max_calls: int = _f(3, "commands per example at most")
    call_below: float = _f(0.0, "guided: also call where the SLM's top probability is under this (0: off)")
    call_at: str = _f("any", "guided: which divergences get a command: 'any'; 'numbers': only where the LLM's "
                             "or the SLM's token holds a digit or an arithmetic sign (between real models most "
                             "divergences are wording, 'To find' against 'To determine', and a call there is wasted)")
    solved_only: bool = _f(True, "keep only solutions that reach the gold answer (false: keep every one, "
                                 "e.g. a smoke run with models that solve nothing)")
    max_new_tokens: int = _f(64, "length of the solutions the warm-up rows are built from")
    train_llm_tokens: bool = _f(False, "keep the LLM's tokens in the loss (the reference does)")
    clean_context: bool = _f(False, "guided: rows for an edge that drops commands from the SLM's context "
                                    "(RelayDecoder(command_context='drop')); false: the paper's, commands stay")
    epochs: float = _f(1.0, "epochs over the rows (steps wins when > 0)")
    steps: int = _f(80, "optimizer steps (-1: by epochs)")
    lr: float = _f(1e-3, "learning rate (the paper: 2e-5 on 1.7B; this default is for the tiny models)")
    batch_size: int = _f(16, "rows per device per step")
    save_steps: int = _f(20, "checkpoint every this many steps (resume point)")
    llm_paths: str = _f("torch", "who writes the LLM's solving paths: 'torch' (the LLM loaded for training) or "
                                 "'llama.cpp' (its GGUF, greedy: a real LLM writes ~20 tokens/s there on 2 cores)")
    lora_r: int = _f(0, "LoRA rank on the attention projections, plus the command tokens' embedding rows "
                        "(peft); 0: full fine-tuning (the tiny models)")
    lora_alpha: int = _f(32, "LoRA scaling alpha (with lora_r > 0)")
    bf16: bool = _f(False, "load the SLM's weights in bfloat16")
    amp_bf16: bool | None = _f(None, "TRL's bfloat16 autocast (None: TRL's default, on); false on a CPU without "
                                     "bf16 instructions (AVX2 only), where bf16 matmuls take torch's slow "
                                     "single-threaded fallback gemm")

    def __post_init__(self):
        _rows_ok(self.rows, "warmup")
        _need(self.llm_paths in ("torch", "llama.cpp"), "warmup",
              f"llm_paths must be 'torch' or 'llama.cpp', got {self.llm_paths!r}")
        _need(self.lora_r >= 0 and self.lora_alpha >= 1, "warmup", "lora_r must be >= 0 and lora_alpha >= 1")
        _need(self.strategy in WARMUP_STRATEGIES, "warmup", f"strategy must be one of {WARMUP_STRATEGIES}, "
                                                            f"got {self.strategy!r}")
        for name in ("n_examples", "n_call", "max_new_tokens", "batch_size", "save_steps"):
            _need(getattr(self, name) >= 1, "warmup", f"{name} must be at least 1, got {getattr(self, name)}")
        _need(self.max_calls >= 0, "warmup", f"max_calls must be >= 0, got {self.max_calls}")
        _need(self.n_rule in N_RULES, "warmup", f"n_rule must be one of {N_RULES}, got {self.n_rule!r}")
        _need(self.call_at in CALL_AT, "warmup", f"call_at must be one of {CALL_AT}, got {self.call_at!r}")
        _need(0.0 <= self.call_below <= 1.0, "warmup", f"call_below is a probability, got {self.call_below}")
        _need(self.steps == -1 or self.steps >= 1, "warmup", f"steps must be >= 1 (or -1: by epochs), got {self.steps}")
        _need(self.lr > 0 and self.epochs > 0, "warmup", "lr and epochs must be > 0")


@dataclass
class GrpoConfig:
    """GRPO with relay rollouts and rewards (training/relay/grpo.py, rewards.py)."""

    input: str | None = _f(None, "the SLM to train (default: the warm-up's output when there, else `slm`)")
    n_prompts: int | None = _f(None, "training questions (default: steps * prompts_per_step)")
    rows: list[dict] | None = _f(None, "inline questions instead of `data`: [{prompt, answer}], the prompt as "
                                       "the model sees it, graded as the built-in task")
    steps: int = _f(12, "optimizer steps")
    group_size: int = _f(8, "rollouts per question (the reference: 8)")
    prompts_per_step: int = _f(2, "questions per step")
    reward: str = _f("table", "'table': the group-case table; 'simple': accuracy - lam * call ratio")
    lam: float = _f(0.5, "simple reward: weight of the call ratio")
    mask_llm_tokens: bool = _f(True, "leave the LLM's tokens out of the policy loss and KL")
    lr: float = _f(5e-5, "learning rate (the reference: 1e-6 on 1.7B; chosen on validation for the tiny default pair: "
                                 "2e-4 drifted, docs/relay-protocol.md)")
    kl: float = _f(1e-2, "KL coefficient (beta)")
    clip: float = _f(0.2, "PPO clip epsilon")
    temperature: float = _f(1.0, "the SLM's sampling temperature in rollouts")
    llm_temperature: float = _f(0.0, "the helper LLM's sampling temperature: 0 = greedy, the same as the "
                                     "evaluation harness (one setting for training and evaluation)")
    max_tokens: int = _f(TRAIN_LIMITS.max_tokens, "response tokens per rollout; not the evaluation's "
                         f"{EVAL_LIMITS.max_tokens} (protos/protocol.py TRAIN_LIMITS says why): a real pair's "
                         f"answers need {EVAL_LIMITS.max_tokens}")
    max_calls: int = _f(TRAIN_LIMITS.max_calls, "calls per rollout at most; the paper's training limit, not the "
                        f"evaluation's {EVAL_LIMITS.max_calls} (protos/protocol.py TRAIN_LIMITS)")
    command_context: str = _f("keep", "'keep' (the paper's: a command stays in the SLM's context) or 'drop' "
                                      "(it leaves the context once the LLM wrote; docs/relay-protocol.md)")
    rollout_batch_size: int = _f(0, "rollouts decoded together (one forward per step for all of them); "
                                    "0: every rollout of a step at once")
    llm_solvable_only: bool = _f(True, "train on questions the in-process LLM solves greedily")
    save_steps: int = _f(10, "checkpoint every this many steps (resume point)")
    lora_r: int = _f(0, "LoRA rank on the attention projections plus the command tokens' rows, on top of the "
                        "model GRPO starts from (which is then the KL reference); 0: every weight trains")
    lora_alpha: int = _f(32, "LoRA scaling alpha (with lora_r > 0)")
    amp_bf16: bool | None = _f(None, "TRL's bfloat16 autocast in the scoring pass (None: TRL's default, on); false "
                                     "on a CPU without fast bf16 matmuls, where a step of the 0.5B took 4x as long")

    def __post_init__(self):
        _rows_ok(self.rows, "grpo")
        _need(self.reward in REWARD_KINDS, "grpo", f"unknown reward {self.reward!r}: choose one of {REWARD_KINDS}")
        for name in ("steps", "group_size", "prompts_per_step", "max_tokens", "save_steps"):
            _need(getattr(self, name) >= 1, "grpo", f"{name} must be at least 1, got {getattr(self, name)}")
        _need(self.group_size >= 2, "grpo", f"group_size must be at least 2 (GRPO compares a group), got {self.group_size}")
        _need(self.n_prompts is None or self.n_prompts >= 1, "grpo", f"n_prompts must be at least 1, got {self.n_prompts}")
        _need(self.max_calls >= 0, "grpo", f"max_calls must be >= 0, got {self.max_calls}")
        _need(self.lora_r >= 0 and self.lora_alpha >= 1, "grpo", "lora_r must be >= 0 and lora_alpha >= 1")
        _need(self.rollout_batch_size >= 0, "grpo", f"rollout_batch_size must be >= 0, got {self.rollout_batch_size}")
        _need(self.command_context in COMMAND_CONTEXTS, "grpo",
              f"command_context must be 'keep' or 'drop', got {self.command_context!r}")
        _need(self.lr > 0 and self.temperature > 0, "grpo", "lr and temperature must be > 0")
        _need(self.kl >= 0 and 0 < self.clip < 1 and self.llm_temperature >= 0, "grpo",
              "kl must be >= 0, clip in (0, 1), llm_temperature >= 0")


@dataclass
class ExportConfig:
    """HF checkpoint -> GGUF with llama.cpp's converter and quantizer (training/models/export.py)."""

    input: str | None = _f(None, "the checkpoint to export (default: GRPO's output, else the warm-up's)")
    name: str = _f("model", "file name stem: <name>-f16.gguf, <name>-q8_0.gguf, ...")
    quants: list[str] = _f(["q8_0"], f"quantizations besides f16, any of {QUANTS}")

    def __post_init__(self):
        bad = [q for q in self.quants if q.lower() not in QUANTS]
        _need(not bad, "export", f"unknown quantization(s) {bad}: choose from {QUANTS}")
        _need(bool(self.name) and "/" not in self.name, "export", f"name must be a file name stem, got {self.name!r}")


@dataclass
class TrainConfig:
    """A `relayllm train` run: the models, the data, the output folder, and one config per stage."""

    slm: str | None = _f(None, "the SLM: HF checkpoint folder or GGUF file")
    llm: str | None = _f(None, "the helper LLM: HF folder, GGUF file (same tokenizer as the SLM), or "
                               "grpc://HOST:PORT (a running `relayllm serve`; GRPO only)")
    out: str | None = _f(None, "output folder: warmup/, grpo/, gguf/ go under it")
    data: str | None = _f(None, "JSONL of questions and answers (GSM8K's '#### n' included), or "
                                "'gsm8k:pool' (a subset shipped in training/data/gsm8k); "
                                "default: the built-in task's train split")
    instruction: str = _f(DEFAULT_INSTRUCTION, "with `data`: the line after each question in the chat turn")
    chat: bool | None = _f(None, "with `data`: use the SLM tokenizer's chat template (default: when it has one)")
    seed: int = _f(0, "seed for every stage")
    warmup: WarmupConfig = field(default_factory=WarmupConfig, metadata={"help": "the warm-up stage"})
    grpo: GrpoConfig = field(default_factory=GrpoConfig, metadata={"help": "the GRPO stage"})
    export: ExportConfig = field(default_factory=ExportConfig, metadata={"help": "the export stage"})

    def __post_init__(self):
        if self.data is not None and str(self.data).startswith("gsm8k:"):
            from relayllm.training.data import gsm8k

            split = str(self.data).split(":", 1)[1]
            # never a subset that reports results: the dev-test is for the table alone
            _need(split == "pool", "top", f"data: gsm8k:{split} is not for training (validation chooses, "
                                          "dev-test reports): use gsm8k:pool")
            self.data = str(gsm8k.path(split))
        if self.data is not None:
            _need(Path(self.data).is_file(), "top", f"data: no such file: {self.data}")


SECTIONS = {"warmup": WarmupConfig, "grpo": GrpoConfig, "export": ExportConfig}


def _type_ok(value, tp) -> bool:
    """Whether a TOML/JSON value fits a field's annotation (int for float is fine, bool for int is not)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp is dict:
        return isinstance(value, dict)
    if origin is list:
        return isinstance(value, list) and all(_type_ok(v, args[0]) for v in value)
    return True


def _build(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise TrainingError(f"[{where}] must be a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls) if f.name not in SECTIONS]
    unknown = sorted(set(data) - set(names) - (set(SECTIONS) if cls is TrainConfig else set()))
    if unknown:
        at = "at the top" if where == "top" else f"in [{where}]"
        raise TrainingError(f"unknown key(s) {at}: {', '.join(unknown)}; allowed: {', '.join(names)}")
    for key, value in data.items():
        if key in names and not _type_ok(value, hints[key]):
            want = getattr(hints[key], "__name__", None) if typing.get_origin(hints[key]) is None else None
            want = want or str(hints[key]).replace("typing.", "")
            raise TrainingError(f"[{where}] {key}: expected {want}, got {value!r}")
    return {k: v for k, v in data.items() if k in names}


def train_config_from_dict(data: dict) -> TrainConfig:
    """A TrainConfig from a parsed TOML/JSON document; readable errors for unknown keys and bad values."""
    top = _build(TrainConfig, data, "top")
    sections = {name: cls(**_build(cls, data.get(name) or {}, name)) for name, cls in SECTIONS.items()}
    return TrainConfig(**top, **sections)


def read_config_file(path: str | Path | None) -> dict:
    """The config file as a dict (empty without a file); readable errors for bad files."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
                import tomli as tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:  # json and tomllib errors are ValueErrors
        raise TrainingError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise TrainingError(f"config {path} must hold a table/object at the top")
    return data


def describe() -> str:
    """Every key of every section with its default and help (`relayllm train --show-config`)."""
    lines = []
    for where, cls in (("top", TrainConfig), *SECTIONS.items()):
        lines.append(f"[{where}]" if where != "top" else "# top level")
        for f in fields(cls):
            if f.name in SECTIONS:
                continue
            default = f.default if f.default is not MISSING else f.default_factory()
            lines.append(f"{f.name} = {json.dumps(default)}    # {f.metadata.get('help', '')}")
        lines.append("")
    return "\n".join(lines)


def as_dict(config) -> dict:
    return asdict(config)

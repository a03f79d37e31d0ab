"""Warm-up (SFT): teach the SLM the command `<call>N</call>` before GRPO.

The data are built from prompts with known answers, in one of three strategies:

- "random" (the paper's): correct SLM solutions (greedy) with 0 to `max_calls` commands
  inserted at random token positions; the text simply continues after each command. This
  teaches the syntax only.
- "guided": the LLM solves the prompt greedily (rows it gets wrong are dropped); along that
  path the SLM is teacher-forced, and at the first position where the SLM's greedy token
  departs from the LLM's, the SLM writes `<call>N</call>`, then the LLM's next N tokens
  follow (written by the LLM), then the path goes on, up to `max_calls` commands. N varies:
  the span of the LLM's tokens that brings the SLM back onto the path (the next position
  where the SLM's own greedy choice agrees with the LLM's again), at most `n_call`. Before
  each divergence the path is exactly what the SLM would write greedily. Options: with
  `call_below`, a command also goes where the SLM's top probability is under that value;
  with `clean_context` each example becomes rows for an edge that drops commands from the
  SLM's context (command_context="drop"): the answer without commands, one row per command.
- "own": the SLM's own greedy answers; a right one is a row without a command, a wrong one
  gets a command where the LLM first disagrees with it on a number (training/relay/own_path.py);
  after the LLM's N tokens the LLM writes on; "own-handoff": the SLM writes on.

Loss on the answer only (never the prompt); tokens written by the LLM are left out of the
loss by default (`train_llm_tokens=True` keeps them). Training is TRL's SFTTrainer on a
pre-tokenized dataset with a `completion_mask` column: TRL turns every 0 of that mask into
the label -100, so the LLM-token mask reaches the loss through the library's own path.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from relayllm.training.errors import TrainingError
from relayllm.training.relay.checkpoints import add_command_tokens, command_ids, load_checkpoint
from relayllm.training.relay.config import OWN_STRATEGIES
from relayllm.training.relay.config import WARMUP_STRATEGIES as STRATEGIES
from relayllm.training.relay.config import WarmupConfig
from relayllm.training.relay.lora import (LORA_TARGETS, head_rows_checkpoints, restore_command_head_rows,  # noqa: F401
                                         save_adapter_and_merged, with_lora)
from relayllm.training.relay.ship import HEAD_ROWS_FILE  # noqa: F401 - the output head's command rows, beside the adapter

DONE_MARK = "warmup_done.json"
DATA_FILE = "warmup_data.jsonl"
ADAPTER_DIR = "adapter"
PATHS_FILE = "llm_paths.jsonl"


@dataclass
class WarmupExample:
    """One training sequence: prompt, then the completion the SLM should learn."""

    prompt_ids: list[int]
    completion_ids: list[int]  # EOS included
    llm_mask: list[int]  # per completion token: 1 where the LLM wrote it
    calls: int
    context: int = 0  # leading completion tokens that are context only (never in the loss)

    def row(self, train_llm_tokens: bool = False) -> dict:
        """Pre-tokenized SFT row: `completion_mask` 1 where the token counts in the loss."""
        keep = [1 if (i >= self.context and (train_llm_tokens or not m)) else 0 for i, m in enumerate(self.llm_mask)]
        return {"input_ids": self.prompt_ids + self.completion_ids, "completion_mask": [0] * len(self.prompt_ids) + keep}


def clean_context_rows(ex: WarmupExample, open_id: int, close_id: int) -> list[WarmupExample]:
    """The rows of a guided example for an edge that keeps commands out of the SLM's context
    (RelayDecoder's call_threshold): the answer without its commands (the LLM's tokens out of
    the loss), plus one row per command: the clean text before it, then the command, with
    only the command in the loss.

    Why: a command inside the context shifts every later position by its length, and a
    small model that finds digits by position loses its way (the tiny default SLM taught
    with commands inline fell from 52% to 44% on its own)."""
    clean, mask, rows, start = [], [], [], None
    for t, m in zip(ex.completion_ids, ex.llm_mask):
        if t == open_id:
            start = len(clean)
            command = []
        if start is not None:
            command.append(t)
            if t == close_id:
                rows.append(WarmupExample(ex.prompt_ids, clean[:start] + command, [0] * (start + len(command)),
                                          1, context=start))
                start = None
            continue
        clean.append(t)
        mask.append(m)
    return [WarmupExample(ex.prompt_ids, clean, mask, 0)] + rows


# ---------------------------------------------------------------------------------------
# Data


def _rows(rows=None, prompts=None, answers=None, n_examples: int = 512, seed: int = 0, *, questions=None,
          tokenizer=None) -> list[tuple[str, str]]:
    """(prompt text, answer) pairs from a QuestionSet (training/data/benchmark.py, shown in
    `tokenizer`'s format), task rows, explicit lists, or the task's train split; explicit
    prompts or rows win over the QuestionSet."""
    if questions is not None and prompts is None and rows is None:
        return questions.pairs(tokenizer, n_examples)
    if prompts is not None:
        if answers is None or len(answers) != len(prompts):
            raise TrainingError("prompts and answers must be given together, one answer per prompt")
        return [(str(p), str(a)) for p, a in zip(prompts, answers)]
    if rows is None:
        from relayllm.training.data import task

        rows = task.train_split()[:n_examples]
    out = []
    for r in rows:
        if isinstance(r, dict):
            out.append((r["prompt"], str(r["answer"])))
        else:  # task.Example
            out.append((r.prompt, str(r.answer)))
    if not out:
        raise TrainingError("no warm-up prompts")
    return out


@torch.no_grad()
def greedy_ids(model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, batch: int = 64) -> list[list[int]]:
    """Greedy completions as token ids, cut after the first EOS (EOS kept)."""
    eos = tokenizer.eos_token_id
    outs = []
    for start in range(0, len(prompt_ids), batch):
        chunk = prompt_ids[start : start + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[eos] * (width - len(p)) + p for p in chunk], device=model.device)  # left padding
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=model.device)
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=eos, eos_token_id=eos)
        for row in gen[:, width:].tolist():
            outs.append(row[: row.index(eos) + 1] if eos in row else row)
    return outs


@torch.no_grad()
def teacher_forced_greedy(model, prompt_ids: list[int], path: list[int], *, with_top_prob: bool = False):
    """The model's greedy token at each position of `path`, given prompt + path before it
    (and, with `with_top_prob`, the probability of that token)."""
    ids = torch.tensor([prompt_ids + path], device=model.device)
    logits = model(input_ids=ids).logits[0]
    rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(path)].float()
    greedy = rows.argmax(-1).tolist()
    if not with_top_prob:
        return greedy
    return greedy, torch.softmax(rows, -1).max(-1).values.tolist()


def insert_random(completion: list[int], tokenizer, rng: random.Random, *, n_call: int, max_calls: int) -> WarmupExample:
    """The paper's warm-up: 0..max_calls commands at random positions; the text goes on unchanged."""
    k = rng.randint(0, max_calls)
    body = completion[:-1] if completion and completion[-1] == tokenizer.eos_token_id else completion
    positions = sorted(rng.sample(range(len(body) + 1), min(k, len(body) + 1)))
    out = []
    last = 0
    for pos in positions:
        out += body[last:pos] + command_ids(tokenizer, n_call)
        last = pos
    out += completion[last:]
    return WarmupExample([], out, [0] * len(out), len(positions))


def recovery_span(path: list[int], slm_greedy: list[int], t: int, n_max: int) -> int:
    """N for a command at a divergence `t`: how many of the LLM's tokens bring the SLM back
    onto the LLM's (solving) path, i.e. up to the next position where the SLM's own greedy
    choice (teacher-forced on the path) agrees with it again; at most `n_max`."""
    k = 1
    while k < n_max and t + k < len(path) and slm_greedy[t + k] != path[t + k]:
        k += 1
    return k


def line_span(path: list[int], tokenizer, t: int, n_max: int) -> int:
    """N for a command at a divergence `t` (n_rule "line"): the rest of the LLM's line, through
    the first token from `t` on that holds a newline, at most `n_max`.

    Why: Qwen writes a number one digit per token, and the SLM teacher-forced on the LLM's
    path agrees again one digit later, so "recover" taught N = 1 almost everywhere (80 of 82
    GRPO calls wrote one token) and one digit from the LLM did not fix the SLM's line of
    reasoning (0% of the gap recovered). A line of a GSM8K solution is one step of it."""
    k = 1
    while k < n_max and t + k < len(path) and "\n" not in tokenizer.decode([path[t + k - 1]]):
        k += 1
    return k


MATH_SIGNS = set("0123456789+-*/=%$\u00d7\u00f7")  # call_at "numbers": a token holding one of these


def _numeric(tokenizer, token_id: int) -> bool:
    return bool(MATH_SIGNS & set(tokenizer.decode([token_id])))


def insert_guided(path: list[int], slm_greedy: list[int], tokenizer, *, n_call: int, max_calls: int,
                  slm_top_prob: list[float] | None = None, call_below: float = 0.0,
                  n_rule: str = "recover", call_at: str = "any") -> WarmupExample:
    """Commands where the SLM departs from the LLM's (solving) path; the LLM writes the next N
    (n_rule "recover": the span that brings the SLM back onto the path, at most `n_call`;
    "line": the rest of the LLM's line, at most `n_call`; "fixed": always `n_call`). With `call_below` (an option, 0 = off), also where the SLM's
    top probability is under it: the SLM is taught to call when it is unsure. With call_at
    "numbers", only a divergence where either token holds a digit or an arithmetic sign
    gets a command; at any other divergence the row simply goes on along the LLM's path (the
    SLM learns its wording there, as after the last command)."""
    out, llm_mask, calls, t = [], [], 0, 0
    while t < len(path):
        unsure = slm_top_prob is not None and slm_top_prob[t] < call_below
        departs = slm_greedy[t] != path[t] and (call_at == "any" or _numeric(tokenizer, path[t])
                                                 or _numeric(tokenizer, slm_greedy[t]))
        if calls < max_calls and (departs or unsure):
            n = (recovery_span(path, slm_greedy, t, n_call) if n_rule == "recover"
                 else line_span(path, tokenizer, t, n_call) if n_rule == "line" else n_call)
            cmd = command_ids(tokenizer, n)
            out += cmd
            llm_mask += [0] * len(cmd)
            written = path[t : t + n]
            out += written
            llm_mask += [1] * len(written)
            t += len(written)
            calls += 1
            continue
        out.append(path[t])
        llm_mask.append(0)
        t += 1
    return WarmupExample([], out, llm_mask, calls)


def build_examples(slm, llm, tokenizer, pairs: list[tuple[str, str]], *, strategy: str = "guided", n_call: int = 4,
                   max_calls: int = 2, max_new_tokens: int = 64, seed: int = 0, progress: bool = True,
                   call_below: float = 0.0, grader=None, solved_only: bool = True,
                   n_rule: str = "recover", solutions: list[list[int]] | None = None,
                   call_at: str = "any") -> list[WarmupExample]:
    """Warm-up examples from (prompt, answer) pairs (see the module doc for the strategies).
    `grader(text, answer)`: the built-in task's by default; `solved_only=False` keeps
    solutions that miss the answer too. `solutions`: the solver's paths when they were
    written elsewhere (training/relay/llm_paths.py: a GGUF LLM through llama.cpp)."""
    if grader is None:
        from relayllm.training.data import task

        grader = task.grade
    from tqdm.auto import tqdm

    if strategy not in STRATEGIES:
        raise TrainingError(f"unknown warm-up strategy {strategy!r}: choose one of {STRATEGIES}")
    rng = random.Random(seed)
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    if solutions is None:
        solver = slm if strategy == "random" else llm
        if solver is None:
            raise TrainingError("the guided warm-up needs the LLM")
        solutions = greedy_ids(solver, tokenizer, prompts, max_new_tokens)
    examples = []
    for (prompt_text, answer), p_ids, sol in tqdm(list(zip(pairs, prompts, solutions)), desc=f"warm-up data ({strategy})",
                                                 disable=not progress, mininterval=1.0):
        if solved_only and not grader(tokenizer.decode(sol, skip_special_tokens=True), answer):
            continue  # only solutions that reach the right answer
        if strategy == "random":
            ex = insert_random(sol, tokenizer, rng, n_call=n_call, max_calls=max_calls)
        else:
            greedy, top = teacher_forced_greedy(slm, p_ids, sol, with_top_prob=True)
            ex = insert_guided(sol, greedy, tokenizer, n_call=n_call, max_calls=max_calls, slm_top_prob=top,
                               call_below=call_below, n_rule=n_rule, call_at=call_at)
        ex.prompt_ids = p_ids
        examples.append(ex)
    if not examples:
        raise TrainingError(f"no warm-up example: the {'SLM' if strategy == 'random' else 'LLM'} "
                                 "solved none of the prompts")
    return examples


def _llama_cpp_paths(llm, tokenizer, pairs, max_new_tokens: int, out_dir: Path, progress: bool) -> list[list[int]]:
    """The LLM's greedy solutions written by llama.cpp from its GGUF (cached per question)."""
    from relayllm.training.relay.llm_paths import gguf_solutions

    if not (Path(str(llm)).is_file() and str(llm).endswith(".gguf")):
        raise TrainingError(f"llm_paths 'llama.cpp' needs the LLM's GGUF file, got {llm}")
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p, _ in pairs]
    return gguf_solutions(llm, prompts, max_new_tokens, cache_file=out_dir / PATHS_FILE, progress=progress,
                          stop_ids=(tokenizer.eos_token_id,))


# ---------------------------------------------------------------------------------------
# Training


def _last_checkpoint(out_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out_dir)) if out_dir.is_dir() else None


def make_trainer(model, tokenizer, examples: list[WarmupExample], out_dir, *, train_llm_tokens: bool = False,
                 epochs: float = 1.0, max_steps: int = -1, lr: float = 5e-4, batch_size: int = 16, seed: int = 0,
                 progress: bool = True, save_steps: int = 50, amp_bf16: bool | None = None):
    """TRL SFTTrainer over the examples (pre-tokenized, `completion_mask` -> labels -100).
    `amp_bf16`: TRL's bf16 autocast (None: TRL's own default, which is on)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([ex.row(train_llm_tokens) for ex in examples])
    args = SFTConfig(
        output_dir=str(out_dir), num_train_epochs=epochs, max_steps=max_steps, learning_rate=lr,
        per_device_train_batch_size=batch_size, lr_scheduler_type="cosine", warmup_steps=0.05,
        logging_steps=5, save_steps=save_steps, save_total_limit=2, report_to="none",
        use_cpu=not torch.cuda.is_available(), seed=seed,
        data_seed=seed, completion_only_loss=True, max_length=None, disable_tqdm=not progress,
        dataloader_num_workers=0, weight_decay=0.0, dataset_num_proc=None,
        **({} if amp_bf16 is None else {"bf16": bool(amp_bf16)}),
    )
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)


def run_warmup(slm, llm, out_dir, config: WarmupConfig | None = None, *, questions=None, rows=None, prompts=None,
               answers=None, seed: int = 0, progress: bool = True, resume: bool = True, **fields) -> Path:
    """Warm up the SLM at `slm` (HF checkpoint folder or GGUF file) with the LLM at `llm`; the
    trained checkpoint (with tokenizer, command tokens added) goes to `out_dir`, which is
    returned. `config` (training/relay/config.py WarmupConfig; `fields` override its keys);
    the questions: a QuestionSet (`questions`), task rows, prompts + answers, or by default
    the built-in task's train split.

    The defaults are for the project's tiny models (the paper: 2e-5, one epoch, on 1.7B),
    measured on the default pair (60-100 held-out questions, base SLM 52-53%):
    - 512 examples, 60 steps at 2e-3, calls at divergences only, commands inline: the SLM's
      own accuracy (calls disabled) fell to 37%, relay 38%;
    - 1024 examples, 80 steps at 1e-3, calls also where the SLM is unsure (top probability
      < 0.6), up to 3, commands inline: own accuracy 44%; relay 45% when greedy decides,
      87% at 13% LLM tokens with RelayDecoder's call_threshold 0.1;
    - the same with `clean_context` rows (the default): own accuracy 51%, relay (through
      llama.cpp and the gRPC cloud) 73% / 87% / 92% at 6.9% / 10.3% / 14.4% LLM tokens with
      call_threshold 0.3 / 0.1 / 0.03.
    With `resume`, a finished run is reused and an interrupted one continues from its last
    checkpoint (the data are cached in the folder).
    """
    from transformers import set_seed

    c = replace(config or WarmupConfig(), **fields) if fields else (config or WarmupConfig())
    rows = rows if rows is not None else c.rows
    out_dir = Path(out_dir)
    if resume and (out_dir / DONE_MARK).is_file():
        return out_dir
    set_seed(seed)
    model, tokenizer = load_checkpoint(slm, what="SLM", dtype=torch.bfloat16 if c.bf16 else torch.float32)
    open_id, close_id = add_command_tokens(tokenizer, model)
    data_file = out_dir / DATA_FILE
    if resume and data_file.is_file():
        examples = [WarmupExample(**json.loads(line)) for line in data_file.read_text().splitlines()]
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
        pairs = _rows(rows, prompts, answers, c.n_examples, seed, questions=questions, tokenizer=tokenizer)
        grader = questions.grader if questions is not None else None
        if c.strategy in OWN_STRATEGIES:  # training/relay/own_path.py: the SLM's own answers, both GGUFs
            from relayllm.training.relay.own_path import own_examples

            examples = own_examples(slm, llm, tokenizer, pairs, out_dir, n_call=c.n_call, progress=progress,
                                    max_new_tokens=c.max_new_tokens, grader=grader,
                                    after_call="slm" if c.strategy == "own-handoff" else "llm",
                                    max_calls=c.max_calls)
        else:
            llm_model = solutions = None
            if c.strategy == "guided" and c.llm_paths == "llama.cpp":
                solutions = _llama_cpp_paths(llm, tokenizer, pairs, c.max_new_tokens, out_dir, progress)
            elif c.strategy == "guided":
                llm_model = load_checkpoint(llm, what="LLM")[0]
            examples = build_examples(model, llm_model, tokenizer, pairs, strategy=c.strategy, n_call=c.n_call,
                                      max_calls=c.max_calls, seed=seed, progress=progress, call_below=c.call_below,
                                      max_new_tokens=c.max_new_tokens, solved_only=c.solved_only, grader=grader,
                                      n_rule=c.n_rule, solutions=solutions, call_at=c.call_at)
            del llm_model
        if c.clean_context and c.strategy in ("guided", *OWN_STRATEGIES):
            examples = [row for ex in examples for row in clean_context_rows(ex, open_id, close_id)]
        data_file.write_text("".join(json.dumps(asdict(ex)) + "\n" for ex in examples))
    if c.lora_r > 0:
        model = with_lora(model, c, (open_id, close_id))
    trainer = make_trainer(model, tokenizer, examples, out_dir, train_llm_tokens=c.train_llm_tokens, epochs=c.epochs,
                           max_steps=c.steps, lr=c.lr, batch_size=c.batch_size, seed=seed, progress=progress,
                           save_steps=c.save_steps, amp_bf16=c.amp_bf16)
    last = _last_checkpoint(out_dir) if resume else None
    if c.lora_r > 0:
        trainer.add_callback(head_rows_checkpoints(model, (open_id, close_id)))
        restore_command_head_rows(model, last)
    result = trainer.train(resume_from_checkpoint=last)
    if c.lora_r > 0:
        save_adapter_and_merged(trainer.model, (open_id, close_id), out_dir, ADAPTER_DIR)
    else:
        trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"strategy": c.strategy, "examples": len(examples), "calls": sum(e.calls for e in examples),
               "llm_tokens": sum(sum(e.llm_mask) for e in examples), "steps": trainer.state.global_step,
               "train_loss": result.training_loss, "loss_first": losses[0] if losses else None,
               "loss_last": losses[-1] if losses else None, "losses": losses, "resumed_from": last,
               "seed": seed, "config": asdict(c)}
    (out_dir / DONE_MARK).write_text(json.dumps(summary, indent=1))
    return out_dir

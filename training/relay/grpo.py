"""GRPO for relay decoding: TRL's GRPOTrainer with a rollout that really calls the LLM.

The rollout (`RelayRollout`, given to GRPOTrainer as `rollout_func`) decodes each sample
with the policy SLM token by token on its KV cache. When the SLM closes a command
`<call>N</call>`, the helper LLM (in process, or the project's gRPC cloud) continues the
prompt + text so far, commands removed, for N tokens (capped by the remaining budget);
those tokens are appended to the SLM's context and the SLM goes on, exactly as at
inference. At most `max_calls` calls per sample (the reference: 2 in training).

The LLM's tokens are not the policy's actions: the rollout returns `env_mask` (0 on them),
which TRL multiplies into the loss mask, so they carry no policy gradient and no KL. With
`mask_llm_tokens=False` they are kept, as in the reference, to compare.

Rewards: training/relay/rewards.py ("table" per prompt group, or "simple"). Logged per step
(trainer log and `metrics.jsonl` in the output folder): reward, accuracy, calls per
sample, call ratio, LLM token ratio, KL, and TRL's own figures.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from relayllm.protos.grammar import command_at_end_of_ids
from relayllm.protos.protocol import EVAL_LIMITS, TRAIN_LIMITS, call_size, check_command_context, drops_command
from relayllm.training.errors import TrainingError
from relayllm.training.relay.batched_decode import PaddedBatch
from relayllm.training.relay.checkpoints import add_command_tokens, load_checkpoint
from relayllm.training.relay.config import GrpoConfig
from relayllm.training.relay.helper_llm import CloudLLM, LocalLLM, make_helper  # noqa: F401 - part of this module's API
from relayllm.training.relay.grpo_parts import RelayReward, _budget_callback, _metrics_callback, _prompt_rows, _truncate_metrics  # noqa: F401 - RelayReward is part of this module's API
from relayllm.training.relay.rewards import REWARDS, Rollout, group_rewards  # noqa: F401

DONE_MARK = "grpo_done.json"
CUT_MARK = "grpo_cut.json"  # stopped by the time budget: run again to go on
METRICS_FILE = "metrics.jsonl"


@dataclass
class _Sample:
    """One rollout while it is written: what `rollout_one` and `rollout_group` share."""

    prompt: list[int]
    key: int = 0  # the helper's session for this sample
    completion: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    authors: list[int] = field(default_factory=list)  # 1 = the LLM wrote it
    calls: int = 0
    requested: int = 0  # the N the SLM asked for, summed over its commands
    llm_tokens: int = 0
    dropped: list[tuple[int, int]] = field(default_factory=list)  # completion (start, end) of commands that left
    before_command: torch.Tensor | None = None  # the logits the SLM wrote its last `<call>` from
    done: bool = False

    def result(self) -> dict:
        return {"completion_ids": self.completion, "logprobs": self.logps, "authors": self.authors,
                "calls": self.calls, "requested": self.requested, "dropped": self.dropped}


@dataclass
class _Step:
    """What a sample feeds the SLM after one sampled token: `cut` tokens leave the end of its
    context first (a dropped command), then `feed`; `written` are the LLM's tokens in it."""

    feed: list[int]
    written: list[int]
    cut: int = 0
    first_row: torch.Tensor | None = None  # a dropped command's first LLM token: the logits before `<call>`


class RelayRollout:
    """`rollout_func` for GRPOTrainer: one relay rollout per prompt (TRL repeats each prompt
    `num_generations` times), `batch_size` decoded together (0: all) by `rollout_group`."""

    def __init__(self, tokenizer, helper, *, max_tokens: int = TRAIN_LIMITS.max_tokens,
                 max_calls: int = TRAIN_LIMITS.max_calls, temperature: float = 1.0, mask_llm_tokens: bool = True,
                 seed: int = 0, rollout_threads: int | None = None, command_context: str = "keep",
                 batch_size: int = 0, progress: bool = False):
        self.tokenizer, self.helper, self.progress = tokenizer, helper, progress
        # None: on a CPU, 1 thread for a tiny model (see __call__), every thread for a real one
        self.rollout_threads = rollout_threads
        self.max_tokens, self.max_calls, self.temperature = max_tokens, max_calls, temperature
        self.mask_llm_tokens, self.seed, self.batch_size = mask_llm_tokens, seed, batch_size
        self.command_context = check_command_context(command_context)
        self.open_id, self.close_id = add_command_tokens(tokenizer)
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        # the commands each rollout of the last generation dropped, by its token ids: the drop
        # view of the scoring pass reads them here rather than guessing from the ids
        # (training/relay/drop_context.py)
        self.dropped_by_row: dict[tuple[int, ...], list[tuple[int, int]]] = {}

    # -- the protocol, one sampled token at a time (both engines) ---------------------------
    def _next(self, s: _Sample, logits: torch.Tensor, generator: torch.Generator) -> _Step | None:
        """Sample the SLM's next token from `logits` and take the protocol's decisions
        (protos/protocol.py, as on the device); None when the sample ended (EOS)."""
        temperature = self.temperature or 1.0
        logp = torch.log_softmax(logits.float() / temperature, -1)
        if self.temperature == 0:
            token = int(logp.argmax())
        else:
            token = int(torch.multinomial(logp.exp().cpu(), 1, generator=generator))  # CPU generator
        s.completion.append(token)
        s.logps.append(float(logp[token]))
        s.authors.append(0)
        if token == self.eos:
            s.done = True
            return None
        if token == self.open_id:
            s.before_command = logits
        asked = command_at_end_of_ids(s.completion, self.open_id, self.close_id, self.tokenizer.decode) \
            if token == self.close_id else None
        n = call_size(asked, calls=s.calls, max_calls=self.max_calls, llm_tokens=s.llm_tokens,
                      max_llm_tokens=self.max_tokens, total_tokens=len(s.completion),
                      max_total_tokens=self.max_tokens) if asked else 0
        # the call-ratio penalty is on the N the SLM asked for (design: sum of requested N /
        # length), not on the n the limits let through, served or not: a capped or refused
        # command must not look cheaper to the policy than it is where the limits are wider
        s.requested += asked or 0
        if n <= 0:
            return _Step([token], [])
        written = self.helper.continue_ids(s.prompt + s.completion, n, generator=generator, key=s.key)
        s.calls += 1
        s.llm_tokens += len(written)
        if not drops_command(self.command_context, len(written)):
            return _Step([token] + written, written)  # kept (or a call that brought nothing: it stays)
        # as on the device: the command leaves the context, the LLM's tokens take its place
        start = len(s.completion) - 1 - s.completion[::-1].index(self.open_id, 1)
        s.dropped.append((start, len(s.completion) - 1))
        # the command's tokens in the context: `<call>` and N's digits (`</call>` was never fed)
        return _Step(written, written, cut=len(s.completion) - 1 - start, first_row=s.before_command)

    def _take(self, s: _Sample, step: _Step, chunk: torch.Tensor) -> None:
        """After the forward over `step.feed` (`chunk`: its logits, one row per fed token):
        the LLM's tokens join the completion with the policy's log-probs of them. Row i of the
        chunk predicts feed[i + 1]; a dropped command's first LLM token follows the context
        from before the command."""
        temperature = self.temperature or 1.0
        offset = len(step.feed) - len(step.written)  # 1 when `</call>` was fed first (kept)
        for i, w in enumerate(step.written):
            row = step.first_row if (step.first_row is not None and i == 0) else chunk[i + offset - 1]
            s.completion.append(w)
            s.logps.append(float(torch.log_softmax(row.float() / temperature, -1)[w]))
            s.authors.append(1)
        if (step.written and step.written[-1] == self.eos) or len(s.completion) >= self.max_tokens:
            s.done = True  # the LLM ended the answer, or the budget is spent

    # -- engine 1: one sample, its own KV cache (the reference the batched engine is held to)
    @torch.no_grad()
    def rollout_one(self, model, prompt_ids: list[int], generator: torch.Generator) -> dict:
        """One sample: completion ids, the policy's log-probs, authors (1 = LLM), calls, the
        dropped commands. Temperature 0 is greedy (the parity test compares it with the edge)."""
        s = _Sample(list(prompt_ids))
        self.helper.new_sample(s.key)
        res = model(input_ids=torch.tensor([s.prompt], device=model.device), use_cache=True)
        cache, logits = res.past_key_values, res.logits[0, -1]
        while len(s.completion) < self.max_tokens:
            step = self._next(s, logits, generator)
            if step is None:
                break
            if step.cut:
                cache.crop(-step.cut)
            res = model(input_ids=torch.tensor([step.feed], device=model.device), past_key_values=cache,
                        use_cache=True)
            cache = res.past_key_values
            self._take(s, step, res.logits[0])
            if s.done:
                break
            logits = res.logits[0, -1]
        self.helper.end_sample(s.key)
        return s.result()

    # -- engine 2: a group of samples, one forward per step for all of them ----------------
    @torch.no_grad()
    def rollout_group(self, model, prompts: list[list[int]], generator: torch.Generator) -> list[dict]:
        """`rollout_one` for many samples at once (training/relay/batched_decode.py: one KV
        cache, a padded chunk per step, masks for padding and dropped commands): greedy, it
        writes what `rollout_one` writes, token for token (tests/test_grpo_batched.py). A real
        pair's group is minutes of decoding: a bar follows its longest sample."""
        samples = [_Sample(list(p), key=i) for i, p in enumerate(prompts)]
        for s in samples:
            self.helper.new_sample(s.key)
        batch = PaddedBatch(model, len(samples), self.pad)
        chunks = batch.forward({i: s.prompt for i, s in enumerate(samples)}, keep=1)
        last = {i: c[-1] for i, c in chunks.items()}
        bar = tqdm(total=self.max_tokens, desc=f"rollouts x{len(samples)}", unit="tok", leave=False, disable=not self.progress)
        while True:
            bar.update(max(len(s.completion) for s in samples) - bar.n)
            steps = {}
            for i, s in enumerate(samples):
                if s.done:
                    continue
                step = self._next(s, last[i], generator)
                if step is None:
                    self.helper.end_sample(s.key)
                    batch.finish(i)
                    continue
                if step.cut:
                    batch.cut(i, step.cut)
                steps[i] = step
            if not steps:
                break
            chunks = batch.forward({i: st.feed for i, st in steps.items()},
                                   keep=max(len(st.feed) for st in steps.values()))
            for i, st in steps.items():
                self._take(samples[i], st, chunks[i])
                last[i] = chunks[i][-1]
                if samples[i].done:
                    self.helper.end_sample(samples[i].key)
                    batch.finish(i)
        bar.close()
        return [s.result() for s in samples]

    def __call__(self, prompts: list[str], trainer) -> dict:
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        generator = torch.Generator().manual_seed(self.seed * 100_003 + trainer.state.global_step)
        # a tiny model's steps are all overhead: on a CPU one thread is many times faster than
        # several fighting over busy cores (measured: 24 ms -> 1 ms a step); a real one wants them all
        threads = torch.get_num_threads()
        wanted = self.rollout_threads
        if wanted is None and not torch.cuda.is_available():
            wanted = 1 if sum(p.numel() for p in model.parameters()) < 50_000_000 else 0
        if wanted:
            torch.set_num_threads(wanted)
        out = {"prompt_ids": [], "completion_ids": [], "logprobs": [], "relay_calls": [], "relay_requested": [],
               "relay_llm_tokens": []}
        masks = []
        self.dropped_by_row.clear()  # in place: the drop view holds this dict
        try:
            ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]
            size = self.batch_size or len(ids)
            results = []
            for at in range(0, len(ids), size):
                results += self.rollout_group(model, ids[at: at + size], generator)
            for p_ids, r in zip(ids, results):
                out["prompt_ids"].append(p_ids)
                out["completion_ids"].append(r["completion_ids"])
                out["logprobs"].append(r["logprobs"])
                out["relay_calls"].append(r["calls"])
                out["relay_requested"].append(r["requested"])
                out["relay_llm_tokens"].append(sum(r["authors"]))
                masks.append([1 - a for a in r["authors"]])
                self.dropped_by_row[tuple(p_ids + r["completion_ids"])] = [
                    (len(p_ids) + a, len(p_ids) + b) for a, b in r["dropped"]]
        finally:
            model.train(was_training)
            torch.set_num_threads(threads)
        if self.mask_llm_tokens:
            out["env_mask"] = masks  # TRL: 1 = the policy's token, 0 = the environment's (LLM's)
        return out


def make_trainer(model, tokenizer, helper, pairs, out_dir, *, steps: int = 20, group_size: int = 8,
                 prompts_per_step: int = 2, reward: str = "table", lam: float = 0.5, mask_llm_tokens: bool = True,
                 lr: float = 1e-4, kl: float = 1e-2, clip: float = 0.2, temperature: float = 1.0,
                 max_tokens: int = TRAIN_LIMITS.max_tokens, max_calls: int = TRAIN_LIMITS.max_calls, seed: int = 0,
                 progress: bool = True, save_steps: int = 10, grader=None, command_context: str = "keep",
                 rollout_batch_size: int = 0, callbacks=(), amp_bf16: bool | None = None):
    """TRL GRPOTrainer with the relay rollout and reward (CPU when there is no GPU)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    out_dir = Path(out_dir)
    if kl > 0 and not hasattr(model, "disable_adapter") and not (Path(getattr(model.config, "_name_or_path", "") or "/nonexistent") / "config.json").is_file():
        # TRL builds the KL reference model from the policy's checkpoint folder: give an
        # in-memory model one
        model.save_pretrained(out_dir / "initial-policy")
        model.config._name_or_path = str(out_dir / "initial-policy")
    args = GRPOConfig(
        output_dir=str(out_dir), max_steps=steps, per_device_train_batch_size=group_size * prompts_per_step,
        num_generations=group_size, steps_per_generation=1, gradient_accumulation_steps=1, learning_rate=lr,
        beta=kl, epsilon=clip, temperature=temperature, max_completion_length=max_tokens, logging_steps=1,
        save_steps=save_steps, save_total_limit=2, report_to="none", use_cpu=not torch.cuda.is_available(),
        seed=seed, data_seed=seed, disable_tqdm=not progress, dataloader_num_workers=0, log_completions=False,
        **({} if amp_bf16 is None else {"bf16": bool(amp_bf16)}),  # TRL's default is on (see GrpoConfig.amp_bf16)
    )
    dataset = Dataset.from_list([{"prompt": p, "answer": a} for p, a in pairs])
    rollout = RelayRollout(tokenizer, helper, max_tokens=max_tokens, max_calls=max_calls, temperature=temperature,
                           mask_llm_tokens=mask_llm_tokens, seed=seed, command_context=command_context,
                           batch_size=rollout_batch_size, progress=progress)
    trainer_class = GRPOTrainer
    if command_context == "drop":  # TRL's scoring pass must see the commands dropped, as the rollout did
        from relayllm.training.relay.drop_context import DropView, drop_context_trainer_class

        trainer_class = drop_context_trainer_class()
        trainer_class.relay_view = DropView(None, tokenizer, rollout.open_id, rollout.close_id, max_calls,
                                            dropped=rollout.dropped_by_row)
    trainer = trainer_class(model=model, reward_funcs=[RelayReward(reward, lam, grader)], args=args, train_dataset=dataset,
                          processing_class=tokenizer, rollout_func=rollout,
                          callbacks=[_metrics_callback(out_dir / METRICS_FILE), *callbacks])
    return trainer


def run_grpo(slm, llm, out_dir, config: GrpoConfig | None = None, *, questions=None, rows=None, seed: int = 0,
             progress: bool = True, resume: bool = True, budget_minutes: float | None = None, **fields) -> Path:
    """GRPO on the SLM at `slm` (HF folder, e.g. the warm-up's output) with the helper LLM
    `llm` (HF folder for in process, or "grpc://host:port" for the cloud service). The
    trained checkpoint goes to `out_dir` (returned), with `metrics.jsonl` (one line per step).
    `config`: training/relay/config.py GrpoConfig (`fields` override its keys); the
    questions: a QuestionSet (`questions`, graded by its grader), task rows, or by default
    the built-in task's train split.

    Checkpoints every `save_steps`; a run resumes from the last one. `budget_minutes`: stop
    (with a checkpoint) at the end of the first step past that much wall time; the folder then
    has CUT_MARK instead of DONE_MARK, and the next run goes on from there.

    `lr` and `steps` default to values for the project's tiny models (8-15 s a step on 2
    busy CPU cores); the reference: lr 1e-6 on 1.7B, KL 1e-2, clip 0.2, 8 samples a prompt.
    """
    from transformers import set_seed
    from transformers.trainer_utils import get_last_checkpoint

    c = replace(config or GrpoConfig(), **fields) if fields else (config or GrpoConfig())
    rows = rows if rows is not None else c.rows
    out_dir = Path(out_dir)
    if resume and (out_dir / DONE_MARK).is_file():
        return out_dir
    set_seed(seed)
    grader = questions.grader if questions is not None else None
    if grader is None:
        from relayllm.training.data import task

        grader = task.grade
    model, tokenizer = load_checkpoint(slm, what="SLM")
    if c.lora_r > 0:  # adapters on the model GRPO starts from; TRL's KL reference is that model (adapters off)
        from relayllm.training.relay.lora import with_lora

        model = with_lora(model, c, add_command_tokens(tokenizer))
    helper, llm_model = make_helper(llm, tokenizer, temperature=c.llm_temperature)
    pairs = _prompt_rows(llm_model, tokenizer, rows, c.n_prompts or c.steps * c.prompts_per_step, seed,
                         c.llm_solvable_only, progress, questions=questions, grader=grader, max_tokens=c.max_tokens)
    out_dir.mkdir(parents=True, exist_ok=True)
    last = get_last_checkpoint(str(out_dir)) if resume else None
    metrics = out_dir / METRICS_FILE
    if last:
        _truncate_metrics(metrics, int(Path(last).name.split("-")[-1]))
    elif metrics.exists():
        metrics.unlink()
    trainer = make_trainer(model, tokenizer, helper, pairs, out_dir, steps=c.steps, group_size=c.group_size,
                           prompts_per_step=c.prompts_per_step, reward=c.reward, lam=c.lam,
                           mask_llm_tokens=c.mask_llm_tokens, lr=c.lr, kl=c.kl, clip=c.clip,
                           temperature=c.temperature, max_tokens=c.max_tokens, max_calls=c.max_calls, seed=seed,
                           progress=progress, save_steps=c.save_steps, grader=grader,
                           command_context=c.command_context, rollout_batch_size=c.rollout_batch_size,
                           amp_bf16=c.amp_bf16)
    budget = _budget_callback(budget_minutes) if budget_minutes is not None else None
    if budget is not None:
        trainer.add_callback(budget)
    if c.lora_r > 0:
        from relayllm.training.relay.lora import head_rows_checkpoints, restore_command_head_rows

        trainer.add_callback(head_rows_checkpoints(model, add_command_tokens(tokenizer)))
        restore_command_head_rows(model, last)
    (out_dir / CUT_MARK).unlink(missing_ok=True)
    try:
        trainer.train(resume_from_checkpoint=last)
    finally:
        if isinstance(helper, CloudLLM):
            helper.close()
    if budget is not None and budget.cut_at is not None:
        (out_dir / CUT_MARK).write_text(json.dumps({"step": budget.cut_at, "steps": c.steps,
                                                    "budget_minutes": budget_minutes, "resumed_from": last}))
        return out_dir
    if c.lora_r > 0:
        from relayllm.training.relay.lora import save_adapter_and_merged
        from relayllm.training.relay.warmup import ADAPTER_DIR

        save_adapter_and_merged(trainer.model, add_command_tokens(tokenizer), out_dir, ADAPTER_DIR)
    else:
        trainer.save_model(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    summary = {"steps": trainer.state.global_step, "reward": c.reward, "mask_llm_tokens": c.mask_llm_tokens,
               "helper_calls": helper.stats.calls, "helper_tokens": helper.stats.tokens, "resumed_from": last,
               "group_size": c.group_size, "prompts_per_step": c.prompts_per_step, "lr": c.lr, "kl": c.kl,
               "seed": seed, "config": asdict(c),
               # what the rollouts ran under, beside what the evaluation harness runs (protos/protocol.py)
               "limits": {"training": {"max_calls": c.max_calls, "max_tokens": c.max_tokens},
                          "evaluation": asdict(EVAL_LIMITS)}}
    (out_dir / DONE_MARK).write_text(json.dumps(summary, indent=1))
    return out_dir

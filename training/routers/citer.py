"""CITER: a token router trained as a policy, with the teacher-forcing shortcut.

A routing decision at a position is judged by its effect on the final answer against its
cost: reward = correctness of the final answer - cost_per_llm_token for each LLM token. The
label says which action has the higher estimated reward: SLM (0) or LLM (1).

Estimating that reward needs a rollout to the end for every decision; the shortcut avoids
most of them by teacher-forcing along a reference solution. At each position:
1. the SLM's greedy token equals the reference token -> the SLM stays on a correct path:
   reward(SLM) = 1 >= reward(LLM) = 1 - cost -> label SLM, no rollout;
2. the SLM is off the reference and the LLM's token equals it -> reward(LLM) = 1 - cost,
   the SLM's token is taken to lead off the path -> label LLM, no rollout;
3. both are off the reference -> roll out with the SLM from its own token to the end:
   reward(SLM) = correctness of that answer; label LLM when 1 - cost beats it.
Optionally iterate: relabel the case-3 positions by rolling out with the SLM *and the current
router* (the LLM writing the tokens it routes), then retrain.
The report counts the rollouts the shortcut saved against rolling out every decision, and
precision and recall on held-out *questions* (RouterData.split).

How this differs from the paper: in case 3 only the SLM's branch is rolled out; the LLM's
branch is *assumed* to reach the right answer (reward 1 - cost), not rolled out. The router
is trained by binary cross-entropy on these labels, and once (`iterations=1`, the default and
what the demo runs) where the paper iterates labelling and training; `iterations=2` relabels
case 3 once with the round-1 router.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

SLM_MATCHES, LLM_MATCHES, ROLLED_OUT = 1, 2, 3


@dataclass
class CiterPath:
    prompt_ids: list[int]
    reference_ids: list[int]
    slm_tokens: np.ndarray
    llm_tokens: np.ndarray
    cases: list[int]
    labels: np.ndarray

    @property
    def rollouts(self) -> int:
        return sum(c == ROLLED_OUT for c in self.cases)


def rollout_label(correct: bool, cost_per_llm_token: float) -> float:
    """1 (LLM) when the LLM's reward (taken as 1 - cost) beats the SLM rollout's correctness."""
    return float((1.0 - cost_per_llm_token) > float(correct))


def label_prompt(prompt_ids: Sequence[int], reference_ids: Sequence[int], slm, llm,
                 is_correct: Callable[[list[int]], bool], *, max_new: int = 128,
                 cost_per_llm_token: float = 0.1, rollout=None) -> CiterPath:
    """CITER labels along the reference. `rollout(ids, max_new) -> new ids` finishes an answer for case 3
    (default: the SLM alone, greedily)."""
    prompt, ref = list(prompt_ids), list(reference_ids)
    path = prompt + ref
    start = len(prompt) - 1
    slm_tokens = np.asarray(slm.next_tokens(path, start))[: len(ref)]
    llm_tokens = np.asarray(llm.next_tokens(path, start))[: len(ref)]
    finish = rollout or slm.complete
    cases, labels = [], []
    for i, (mine, theirs, gold) in enumerate(zip(slm_tokens.tolist(), llm_tokens.tolist(), ref)):
        if mine == gold:
            cases.append(SLM_MATCHES)
            labels.append(0.0)
        elif theirs == gold:
            cases.append(LLM_MATCHES)
            labels.append(1.0)
        else:
            branch = ref[:i] + [mine]
            branch += finish(prompt + branch, max_new - len(branch))
            cases.append(ROLLED_OUT)
            labels.append(rollout_label(bool(is_correct(branch)), cost_per_llm_token))
    return CiterPath(prompt, ref, slm_tokens, llm_tokens, cases, np.asarray(labels, dtype=np.float32))


class RouterRollout:
    """Greedy decoding by the SLM with a torch router handing tokens to the LLM (the iteration step)."""

    def __init__(self, slm_model, llm, net, spec, threshold: float = 0.5, eos_token_id: int | None = None):
        self.slm_model, self.llm, self.net, self.spec, self.threshold = slm_model, llm, net, spec, threshold
        self.eos = eos_token_id if eos_token_id is not None else slm_model.config.eos_token_id
        self.llm_tokens = 0

    def __call__(self, ids, max_new: int) -> list[int]:
        import torch

        from relayllm.training.routers.features import sequence_features

        seq, new = list(ids), []
        for _ in range(max(0, max_new)):
            feats = sequence_features(self.slm_model, seq, self.spec, start=len(seq) - 1)
            token = int(feats.greedy[-1])
            with torch.no_grad():
                p = float(self.net(torch.as_tensor(feats.dense[-1:]), torch.as_tensor([token]))[0])
            if p >= self.threshold:
                token = int(self.llm.next_tokens(seq, len(seq) - 1)[-1])
                self.llm_tokens += 1
            seq.append(token)
            new.append(token)
            if token == self.eos:
                break
        return new


@dataclass
class CiterReport:
    prompts: int
    positions: int
    case_counts: dict
    rollouts: int
    rollouts_without_shortcut: int
    rollouts_saved: float
    positives: int
    iterations: int
    relabelled_changed: int = 0
    train: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)


def _router_data(paths, slm_model, spec):
    from relayllm.training.routers.features import labelled_data

    return labelled_data(slm_model, spec, ((p.prompt_ids, p.reference_ids, p.labels) for p in paths))


def train_citer(slm_model, llm_model, examples: Sequence[tuple[list[int], list[int], Callable[[list[int]], bool]]],
                *, out_path, eos_token_id: int | None = None, max_new: int = 128, cost_per_llm_token: float = 0.1,
                iterations: int = 1, hidden: int = 64, epochs: int = 40, held_out: float = 0.25, seed: int = 0,
                progress: bool = True) -> CiterReport:
    """Label `examples` ((prompt ids, reference solution ids, grader of response ids)), train, export ONNX.

    `iterations` = 2 relabels the case-3 positions with rollouts by the SLM plus the round-1 router.
    """
    from tqdm.auto import tqdm

    from relayllm.training.routers.onnx_export import export_onnx
    from relayllm.training.routers.features import HFGreedyLM, feature_spec_for, precision_recall, train_router

    slm, llm = HFGreedyLM(slm_model, eos_token_id), HFGreedyLM(llm_model, eos_token_id)
    spec = feature_spec_for(slm_model)
    table = slm_model.get_input_embeddings().weight
    paths = [label_prompt(p, r, slm, llm, g, max_new=max_new, cost_per_llm_token=cost_per_llm_token)
             for p, r, g in tqdm(examples, desc="citer labels", unit="prompt", disable=not progress)]
    data = _router_data(paths, slm_model, spec)
    train, test = data.split(held_out, seed)
    net = train_router(train, spec, table, hidden=hidden, epochs=epochs, seed=seed, progress=progress)
    changed = 0
    for _ in range(1, iterations):
        roll = RouterRollout(slm_model, llm, net, spec, eos_token_id=eos_token_id)
        new_paths = [label_prompt(p, r, slm, llm, g, max_new=max_new, cost_per_llm_token=cost_per_llm_token,
                                  rollout=roll)
                     for p, r, g in tqdm(examples, desc="citer relabel", unit="prompt", disable=not progress)]
        changed += int(sum((a.labels != b.labels).sum() for a, b in zip(paths, new_paths)))
        paths = new_paths
        data = _router_data(paths, slm_model, spec)
        train, test = data.split(held_out, seed)
        net = train_router(train, spec, table, hidden=hidden, epochs=epochs, seed=seed, progress=progress)
    positions = sum(len(p.cases) for p in paths)
    rollouts = sum(p.rollouts for p in paths)
    counts = {name: sum(c == case for p in paths for c in p.cases)
              for name, case in (("slm_matches", SLM_MATCHES), ("llm_matches", LLM_MATCHES), ("rolled_out", ROLLED_OUT))}
    report = CiterReport(
        prompts=len(paths), positions=positions, case_counts=counts, rollouts=rollouts,
        # Without the shortcut every decision is judged by a rollout (the same estimator as case 3).
        rollouts_without_shortcut=positions,
        rollouts_saved=1.0 - rollouts / positions if positions else 0.0,
        positives=int(sum(p.labels.sum() for p in paths)), iterations=iterations, relabelled_changed=changed,
        train=precision_recall(net, train), held_out=precision_recall(net, test))
    export_onnx(net, out_path, mode="citer", info={"report": report.__dict__})
    return report

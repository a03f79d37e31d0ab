"""R2R (Roads to Rome): label the tokens where the SLM's choice changes the answer, train a router on them.

Labelling, per training prompt:
1. the LLM answers greedily: that path is the reference the router should keep the SLM on;
2. teacher-forced along it, the SLM's greedy next token at every position (one forward pass);
3. where the SLM's token differs from the LLM's, continue greedily with the LLM from the SLM's
   choice (R2R continues both branches with the LLM; the LLM's own branch is the path it
   already wrote, so it costs nothing) and compare the final correctness of the two branches:
   different -> divergent (label 1), same -> neutral (label 0). Positions where the two
   models agree are negatives too. Only divergent positions are positives.
The router then learns, from the SLM's own features at each position, to spot divergent
tokens; training uses class balancing (positives weighed by negatives / positives). The
held-out precision and recall are on held-out *questions* (RouterData.split): no question has
positions on both sides.

How this differs from the paper: R2R asks a verifier LLM whether the two continuations differ
in meaning; here there is no verifier model, the label is the final answers' correctness
(`is_correct`), and the rule is symmetric: a disagreement is divergent when the SLM's branch
is wrong where the LLM's path is right, *and* when it is right where the LLM's path is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

AGREE, NEUTRAL, DIVERGENT = "agree", "neutral", "divergent"


@dataclass
class LabelledPath:
    """The labels of one prompt's response positions (row i: the token at response index i)."""

    prompt_ids: list[int]
    response_ids: list[int]       # the LLM's greedy response (the path)
    slm_tokens: np.ndarray        # the SLM's greedy choice at each position along the path
    kinds: list[str]              # agree / neutral / divergent per position
    path_correct: bool
    rollouts: int = 0

    @property
    def labels(self) -> np.ndarray:
        return np.array([k == DIVERGENT for k in self.kinds], dtype=np.float32)


def label_prompt(prompt_ids: Sequence[int], slm, llm, is_correct: Callable[[list[int]], bool], *,
                 max_new: int = 128) -> LabelledPath:
    """R2R labels for one prompt. `slm` / `llm` offer next_tokens(ids, start) and complete(ids, max_new);
    `is_correct(response_ids)` grades a full response."""
    prompt = list(prompt_ids)
    response = llm.complete(prompt, max_new)
    path = prompt + response
    slm_tokens = np.asarray(slm.next_tokens(path, len(prompt) - 1))[: len(response)]
    path_correct = bool(is_correct(response))
    kinds, rollouts = [], 0
    for i, (mine, theirs) in enumerate(zip(slm_tokens.tolist(), response)):
        if mine == theirs:
            kinds.append(AGREE)
            continue
        branch = response[:i] + [mine]
        branch += llm.complete(prompt + branch, max_new - len(branch))
        rollouts += 1
        kinds.append(DIVERGENT if bool(is_correct(branch)) != path_correct else NEUTRAL)
    return LabelledPath(prompt, response, slm_tokens, kinds, path_correct, rollouts)


@dataclass
class R2RReport:
    prompts: int
    positions: int
    disagreements: int
    divergent: int
    rollouts: int
    train: dict = field(default_factory=dict)
    held_out: dict = field(default_factory=dict)


def train_r2r(slm_model, llm_model, prompts: Sequence[tuple[list[int], Callable[[list[int]], bool]]], *,
              out_path, eos_token_id: int | None = None, max_new: int = 128, hidden: int = 64, epochs: int = 40,
              held_out: float = 0.25, seed: int = 0, progress: bool = True) -> R2RReport:
    """Label `prompts` ((prompt ids, grader of response ids) pairs), train, export ONNX to `out_path`."""
    from tqdm.auto import tqdm

    from relayllm.training.routers.onnx_export import export_onnx
    from relayllm.training.routers.features import (
        HFGreedyLM,
        feature_spec_for,
        labelled_data,
        precision_recall,
        train_router,
    )

    slm, llm = HFGreedyLM(slm_model, eos_token_id), HFGreedyLM(llm_model, eos_token_id)
    paths = [label_prompt(ids, slm, llm, grade, max_new=max_new)
             for ids, grade in tqdm(prompts, desc="r2r labels", unit="prompt", disable=not progress)]
    spec = feature_spec_for(slm_model)
    data = labelled_data(slm_model, spec, ((p.prompt_ids, p.response_ids, p.labels) for p in paths))
    train, test = data.split(held_out, seed)
    table = slm_model.get_input_embeddings().weight
    net = train_router(train, spec, table, hidden=hidden, epochs=epochs, seed=seed, progress=progress)
    report = R2RReport(
        prompts=len(paths), positions=len(data),
        disagreements=sum(k != AGREE for p in paths for k in p.kinds),
        divergent=sum(k == DIVERGENT for p in paths for k in p.kinds),
        rollouts=sum(p.rollouts for p in paths),
        train=precision_recall(net, train), held_out=precision_recall(net, test))
    export_onnx(net, out_path, mode="r2r", info={"report": report.__dict__})
    return report

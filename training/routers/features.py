"""Token-router features in training, the router network, and its training loop.

The features are the ones the edge reads from llama.cpp (relayllm.edge.token_router): the
SLM's top-k probabilities and entropy, its last hidden state, and the candidate token's
embedding. Here they come from the HF model's own forward pass over a whole sequence at
once (teacher forcing), and go through the edge's `dense_features`, so the arithmetic is
the same code on both sides.

RouterNet is CITER's shape, in -> 2h -> h -> 1 with a sigmoid, over [dense features,
candidate embedding]. The SLM's token embedding table is a frozen buffer inside the
network, so the exported ONNX file looks the candidate up itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from relayllm.edge.token_router import FeatureSpec, dense_features


def feature_spec_for(model, *, top_k: int = 8, hidden_state: bool = True, token_embedding: bool = True) -> FeatureSpec:
    return FeatureSpec(top_k=top_k, hidden_state=hidden_state, token_embedding=token_embedding,
                       hidden_size=int(model.config.hidden_size))


@dataclass
class PositionFeatures:
    """Features of the positions `start .. T-1` of one sequence; row i predicts token start+i+1."""

    dense: np.ndarray        # [n, D]
    greedy: np.ndarray       # [n] the SLM's greedy (candidate) token at each position
    logits: np.ndarray | None = None  # [n, V] when asked for


@torch.no_grad()
def sequence_features(model, input_ids, spec: FeatureSpec, start: int = 0, keep_logits: bool = False) -> PositionFeatures:
    """One forward pass of the HF `model` over `input_ids`; the router features at positions start..end.

    The hidden state is the final-norm output that the LM head reads -- the same vector
    llama.cpp hands out as the token's embedding (pooling NONE).
    """
    ids = torch.as_tensor(input_ids, dtype=torch.long).reshape(1, -1)
    out = model(input_ids=ids, output_hidden_states=spec.hidden_state)
    logits = out.logits[0, start:].float().numpy()
    hidden = out.hidden_states[-1][0, start:].float().numpy() if spec.hidden_state else None
    dense = dense_features(spec, logits, hidden)
    return PositionFeatures(dense=dense, greedy=logits.argmax(-1), logits=logits if keep_logits else None)


class RouterNet(nn.Module):
    """p_llm = sigmoid(MLP([normalised dense features, candidate embedding])), in -> 2h -> h -> 1."""

    def __init__(self, spec: FeatureSpec, token_table: torch.Tensor | None = None, hidden: int = 64):
        super().__init__()
        self.spec = spec
        in_size = spec.dense_size
        if spec.token_embedding:
            if token_table is None:
                raise ValueError("spec.token_embedding needs the SLM's token embedding table")
            # fp16 halves the file; the lookup is cast back to fp32 before the MLP.
            self.register_buffer("token_table", token_table.detach().to(torch.float16).clone())
            in_size += token_table.shape[1]
        else:
            self.register_buffer("token_table", torch.zeros(1, 1, dtype=torch.float16))
        # Standardisation of the dense features, fitted on the training set (set_normalisation).
        self.register_buffer("dense_mean", torch.zeros(spec.dense_size))
        self.register_buffer("dense_std", torch.ones(spec.dense_size))
        self.mlp = nn.Sequential(
            nn.Linear(in_size, 2 * hidden), nn.ReLU(),
            nn.Linear(2 * hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def set_normalisation(self, dense: np.ndarray) -> None:
        d = torch.as_tensor(dense, dtype=torch.float32)
        self.dense_mean.copy_(d.mean(0))
        self.dense_std.copy_(d.std(0).clamp_min(1e-4))

    def logit(self, dense: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        x = (dense - self.dense_mean) / self.dense_std
        if self.spec.token_embedding:
            x = torch.cat([x, self.token_table[token].float()], dim=-1)
        return self.mlp(x).squeeze(-1)

    def forward(self, dense: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(dense, token))


@dataclass
class RouterData:
    """Labelled positions: dense features, candidate tokens, labels (1 = the LLM should write it),
    and the question each position comes from (`question`: its index among the prompts)."""

    dense: np.ndarray
    token: np.ndarray
    label: np.ndarray
    question: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    @property
    def questions(self) -> int:
        return len(np.unique(self.question))

    @classmethod
    def concat(cls, parts: list["RouterData"], spec: FeatureSpec) -> "RouterData":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls(np.zeros((0, spec.dense_size), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32),
                       np.zeros(0, np.int64))
        return cls(np.concatenate([p.dense for p in parts]).astype(np.float32),
                   np.concatenate([p.token for p in parts]).astype(np.int64),
                   np.concatenate([p.label for p in parts]).astype(np.float32),
                   np.concatenate([p.question for p in parts]).astype(np.int64))

    def split(self, held_out: float, seed: int = 0) -> tuple["RouterData", "RouterData"]:
        """(train, held out) by question, not by position: the positions of one answer are
        alike (one prefix, one solution), so a question on both sides would leak its labels
        into the held-out precision and recall. round(held_out * questions) questions, drawn
        by `seed`, are held out; with two or more questions, at least one is on each side."""
        ids = np.unique(self.question)
        n_test = int(round(held_out * len(ids)))
        if len(ids) >= 2 and held_out > 0:
            n_test = min(max(n_test, 1), len(ids) - 1)
        test_ids = np.random.default_rng(seed).permutation(ids)[:n_test]
        in_test = np.isin(self.question, test_ids)
        pick = lambda keep: RouterData(self.dense[keep], self.token[keep], self.label[keep], self.question[keep])
        return pick(~in_test), pick(in_test)


def labelled_data(slm_model, spec: FeatureSpec, paths) -> RouterData:
    """The SLM's features along labelled paths (teacher forcing), with their labels: one data
    builder for R2R and CITER. `paths` yields (prompt ids, response ids, labels per response
    token); the response is the LLM's greedy path (R2R) or the reference solution (CITER)."""
    parts = []
    for question, (prompt_ids, response_ids, labels) in enumerate(paths):
        if not response_ids:
            continue
        feats = sequence_features(slm_model, list(prompt_ids) + list(response_ids), spec, start=len(prompt_ids) - 1)
        n = len(response_ids)
        parts.append(RouterData(feats.dense[:n], feats.greedy[:n].astype(np.int64), labels,
                                np.full(n, question, dtype=np.int64)))
    return RouterData.concat(parts, spec)


def train_router(data: RouterData, spec: FeatureSpec, token_table: torch.Tensor | None, *, hidden: int = 64,
                 epochs: int = 30, lr: float = 3e-3, batch_size: int = 256, balance: bool = True,
                 seed: int = 0, progress: bool = True) -> RouterNet:
    """Binary cross-entropy on the labels; `balance` weighs positives by negatives/positives."""
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    net = RouterNet(spec, token_table, hidden=hidden)
    if len(data) == 0:
        return net
    net.set_normalisation(data.dense)
    dense = torch.as_tensor(data.dense)
    token = torch.as_tensor(data.token)
    label = torch.as_tensor(data.label)
    positives = float(label.sum())
    pos_weight = torch.tensor((len(label) - positives) / positives) if balance and positives > 0 else torch.tensor(1.0)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.Adam(net.mlp.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="router", unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(label), generator=gen)
        for i in range(0, len(order), batch_size):
            b = order[i:i + batch_size]
            loss = loss_fn(net.logit(dense[b], token[b]), label[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    return net


@torch.no_grad()
def precision_recall(net: RouterNet, data: RouterData, threshold: float = 0.5) -> dict:
    """Precision, recall and share fired on labelled positions."""
    if len(data) == 0:
        return {"n": 0, "questions": 0, "positives": 0, "precision": None, "recall": None, "fired": 0.0}
    p = net(torch.as_tensor(data.dense), torch.as_tensor(data.token)).numpy()
    pred = p >= threshold
    truth = data.label >= 0.5
    tp = int((pred & truth).sum())
    return {"n": int(len(truth)), "questions": data.questions, "positives": int(truth.sum()), "threshold": threshold,
            "precision": tp / int(pred.sum()) if pred.sum() else None,
            "recall": tp / int(truth.sum()) if truth.sum() else None,
            "fired": float(pred.mean())}


# ---------------------------------------------------------------------------------------
# Greedy next-token access to a model, as the labelling pipelines need it. The HF model is
# the real thing; the pipelines only call these two methods, so a crafted test can script
# them to know exactly which disagreement changes the answer.


class HFGreedyLM:
    """Greedy decoding with an HF causal LM: teacher-forced next tokens, and greedy continuations."""

    def __init__(self, model, eos_token_id: int | None = None):
        self.model = model.eval()
        self.eos_token_id = eos_token_id if eos_token_id is not None else model.config.eos_token_id

    @torch.no_grad()
    def next_tokens(self, ids, start: int) -> np.ndarray:
        """The greedy next token after each prefix ids[:t+1], for t = start .. len(ids)-1 (one forward pass)."""
        x = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        return self.model(input_ids=x).logits[0, start:].argmax(-1).numpy()

    @torch.no_grad()
    def complete(self, ids, max_new: int) -> list[int]:
        """Greedy continuation of `ids` up to EOS (included) or `max_new` tokens."""
        if max_new <= 0:
            return []
        x = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        out = self.model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=max_new, do_sample=False,
                                  eos_token_id=self.eos_token_id, pad_token_id=self.eos_token_id)
        return out[0, x.shape[1]:].tolist()

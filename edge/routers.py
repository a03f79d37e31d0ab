"""Simple per-token routers for `RelayDecoder(router=...)`: the baselines relay is judged against.

A router's `decide(step)` is asked once for every token the SLM is about to write. `step`
is a TokenStep (below): the SLM's logits for the position (numpy array), the candidate
token id, the position and the text so far. It returns how many tokens the LLM should
write from here; 0 lets the SLM write its token.

- RandomRouter(p, seed): hands the LLM a random share p of the response tokens (the
  paper's main baseline: "a random router that reaches the same accuracy").
- ConfidenceRouter(threshold): the LLM writes the token when the SLM's top probability is
  below the threshold.
- AlwaysLLMRouter(): the LLM writes everything (the "llm" mode through the same code path,
  the same Help RPC and the same counters as every other mode).

Only numpy: routers run on the device, next to llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(slots=True)
class TokenStep:
    """What a router sees for each token the SLM is about to write.

    logits: the SLM's logits for this position (a view into llama.cpp's buffer, valid
    during `decide` only: copy it to keep it); candidate: the token the SLM would write
    (also `token`); position: index of this token in the response; text: the response so
    far (as shown to the app)."""

    logits: np.ndarray
    candidate: int
    position: int
    text: str

    @property
    def token(self) -> int:
        return self.candidate


def top_probability(logits) -> float:
    """Probability of the most likely next token under a softmax of `logits` (numerically safe)."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    z = z - z.max()
    # exp(0) = 1 for the argmax, so top prob = 1 / sum(exp(z)).
    return float(1.0 / np.exp(z).sum())


class RandomRouter:
    """Sends a random share `p` of response tokens to the LLM, reproducibly from `seed`.

    When it fires, the LLM writes `run` tokens. The firing probability is chosen so that the
    expected share of LLM tokens is `p` whatever `run` is: per SLM step, a fire yields `run`
    LLM tokens with probability q and one SLM token with probability 1 - q, so the share is
    q*run / (q*run + 1 - q) = p  =>  q = p / (run * (1 - p) + p).
    """

    def __init__(self, p: float, seed: int = 0, run: int = 1):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"RandomRouter: p must be in [0, 1], got {p}")
        if run < 1:
            raise ValueError(f"RandomRouter: run must be >= 1, got {run}")
        self.p = float(p)
        self.run = int(run)
        self.seed = seed
        self.fire_probability = self.p / (self.run * (1.0 - self.p) + self.p) if self.p < 1.0 else 1.0
        self._rng = np.random.default_rng(seed)

    def reseed(self, seed: int) -> None:
        """Start a fresh random stream, e.g. one per question so a question's routing does not depend on order."""
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    def decide(self, step) -> int:
        return self.run if self._rng.random() < self.fire_probability else 0

    def __repr__(self) -> str:
        return f"RandomRouter(p={self.p:g}, seed={self.seed}, run={self.run})"


class ConfidenceRouter:
    """Sends a token to the LLM when the SLM's top next-token probability is below `threshold`."""

    def __init__(self, threshold: float, run: int = 1):
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"ConfidenceRouter: threshold must be in [0, 1], got {threshold}")
        if run < 1:
            raise ValueError(f"ConfidenceRouter: run must be >= 1, got {run}")
        self.threshold = float(threshold)
        self.run = int(run)

    def decide(self, step) -> int:
        return self.run if top_probability(step.logits) < self.threshold else 0

    def __repr__(self) -> str:
        return f"ConfidenceRouter(threshold={self.threshold:g}, run={self.run})"


class AlwaysLLMRouter:
    """The LLM writes every token: asked at the first step, it requests `run` tokens at a time."""

    def __init__(self, run: int = 64):
        if run < 1:
            raise ValueError(f"AlwaysLLMRouter: run must be >= 1, got {run}")
        self.run = int(run)

    def decide(self, step) -> int:
        return self.run

    def __repr__(self) -> str:
        return f"AlwaysLLMRouter(run={self.run})"

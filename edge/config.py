"""What a request may use and how the SLM samples: the edge's per-decoder settings.

    from relayllm.edge import Limits, Sampling
    decoder = RelayDecoder(path, limits=Limits(max_calls=4), sampling=Sampling(temperature=0.7))

Dataclasses checked in __post_init__, with errors that say which field and why. Nothing here
touches llama.cpp or the network.
"""

from __future__ import annotations

from dataclasses import InitVar, dataclass, field


@dataclass(frozen=True)
class Limits:
    """Per-request limits. `max_total_tokens` counts response tokens (SLM + LLM, in the
    SLM's tokenizer); `max_tokens=` is accepted as another name for it."""

    max_calls: int = field(default=8, metadata={"help": "calls to the cloud per request"})
    max_llm_tokens: int = field(default=256, metadata={"help": "tokens the cloud may write per request "
                                                               "(the per-request cloud budget)"})
    max_total_tokens: int = field(default=512, metadata={"help": "response tokens, SLM + LLM"})
    max_tokens: InitVar[int | None] = None

    def __post_init__(self, max_tokens):
        if max_tokens is not None:
            object.__setattr__(self, "max_total_tokens", int(max_tokens))
        for name in ("max_calls", "max_llm_tokens", "max_total_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"Limits.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class Sampling:
    """Sampling on the SLM, and what the LLM is asked to use. temperature 0 = greedy;
    top_k 0 = no limit. seed 0 = a fresh random seed for every request, as in the proto
    (relay.proto's Sampling.seed); any other value makes sampled answers reproducible."""

    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, at most 2"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling, in (0, 1]"})
    top_k: int = field(default=0, metadata={"help": "0 = no limit"})
    seed: int = field(default=0, metadata={"help": "0 = random (as the proto says); else a fixed seed"})

    def __post_init__(self):
        if not 0.0 <= self.temperature <= 2.0:
            raise ValueError(f"Sampling.temperature must be in [0, 2], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"Sampling.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"Sampling.top_k must be >= 0, got {self.top_k}")
        if not 0 <= self.seed < 2**32:
            raise ValueError(f"Sampling.seed must be in [0, 2**32), got {self.seed}")

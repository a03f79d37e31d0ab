"""The SLM's sampler: a llama.cpp sampler chain built from `Sampling`.

Used by the decode loop only. Seed 0 means a random seed per request, as in the proto: the
SDK and the cloud agree on what 0 means.
"""

from __future__ import annotations

import secrets

from relayllm.edge.config import Sampling


def effective_seed(sampling: Sampling) -> int:
    """The seed the sampler really uses: `sampling.seed`, or a fresh random one for 0."""
    return sampling.seed if sampling.seed else secrets.randbits(32) or 1


def make_sampler(sampling: Sampling):
    """A llama_cpp LlamaSampler: greedy for temperature 0, else top-k -> top-p -> temperature -> draw."""
    from llama_cpp._internals import LlamaSampler

    sampler = LlamaSampler()
    if sampling.temperature == 0.0:
        sampler.add_greedy()
        return sampler
    if sampling.top_k > 0:
        sampler.add_top_k(sampling.top_k)
    if sampling.top_p < 1.0:
        sampler.add_top_p(sampling.top_p, 1)
    sampler.add_temp(sampling.temperature)
    sampler.add_dist(effective_seed(sampling))
    return sampler

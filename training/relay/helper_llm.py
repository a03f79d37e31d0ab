"""The helper LLM of the relay training: writes the N tokens a `<call>N</call>` asks for.

In process (an HF model, LocalLLM) or through the project's gRPC cloud
(relayllm.edge.client.CloudClient, CloudLLM). Both get the context with every command
removed, as a raw completion, exactly as at inference. Used by GRPO's rollouts
(training/relay/grpo.py), which decode many samples at once: each sample is a `key`, and
the cloud keeps one session (one KV cache) per sample; the warm-up runs the LLM directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from relayllm.protos.grammar import remove_command_ids
from relayllm.training.relay.checkpoints import add_command_tokens, load_checkpoint


@dataclass
class HelperStats:
    calls: int = 0
    tokens: int = 0
    failures: int = 0  # cloud calls that failed (the SLM then goes on alone, as on the edge)


class LocalLLM:
    """The LLM in process: an HF causal LM continuing token ids (same tokenizer as the SLM)."""

    def __init__(self, model, tokenizer, *, temperature: float = 0.0):
        self.model, self.tokenizer, self.temperature = model, tokenizer, temperature
        self.open_id, self.close_id = add_command_tokens(tokenizer)
        self.stats = HelperStats()

    def new_sample(self, key=0) -> None:
        """A rollout starts (nothing to do in process)."""

    def end_sample(self, key=0) -> None:
        """A rollout ended (nothing to do in process)."""

    @torch.no_grad()
    def continue_ids(self, context: list[int], n: int, *, generator: torch.Generator | None = None,
                     key=0) -> list[int]:
        """Up to `n` tokens continuing `context` (commands removed first); stops after EOS."""
        ctx = remove_command_ids(context, self.open_id, self.close_id)
        eos = self.tokenizer.eos_token_id
        out: list[int] = []
        cache = None
        feed = torch.tensor([ctx], device=self.model.device)
        for _ in range(n):
            res = self.model(input_ids=feed, past_key_values=cache, use_cache=True)
            cache, logits = res.past_key_values, res.logits[0, -1]
            if self.temperature > 0:
                probs = torch.softmax(logits / self.temperature, -1)
                token = int(torch.multinomial(probs.cpu(), 1, generator=generator))  # CPU generator
            else:
                token = int(logits.argmax())
            out.append(token)
            if token == eos:
                break
            feed = torch.tensor([[token]], device=self.model.device)
        self.stats.calls += 1
        self.stats.tokens += len(out)
        return out


class CloudLLM:
    """The LLM behind the project's gRPC cloud (relayllm.edge.client.CloudClient), in token
    mode: both sides share the tokenizer. One cloud session per rollout (KV reuse), keyed by
    the rollout's `key` while a group of rollouts is decoded together."""

    def __init__(self, target_or_client, tokenizer, *, temperature: float = 0.0, deadline_s: float = 30.0):
        from relayllm.edge.client import CloudClient

        self.client = (CloudClient(target_or_client, deadline_s=deadline_s)
                       if isinstance(target_or_client, str) else target_or_client)
        self.tokenizer, self.temperature = tokenizer, temperature
        self.open_id, self.close_id = add_command_tokens(tokenizer)
        self.stats = HelperStats()
        self._sessions: dict = {}

    def new_sample(self, key=0) -> None:
        """A rollout starts: its calls share one cloud session (the cloud reuses its KV
        cache); the session is opened at the rollout's first call."""
        self.end_sample(key)

    def end_sample(self, key=0) -> None:
        """A rollout ended: its cloud session (if it called) ends, and the cloud frees its KV."""
        session = self._sessions.pop(key, None)
        if session is not None:
            session.end()

    def continue_ids(self, context: list[int], n: int, *, generator: torch.Generator | None = None,
                     key=0) -> list[int]:
        """Up to `n` tokens from the cloud; on a cloud failure, whatever arrived (maybe none),
        and the rollout goes on with the SLM alone, as the edge SDK does."""
        from relayllm.edge.client import CloudError

        ctx = remove_command_ids(context, self.open_id, self.close_id)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator)) if generator is not None else 0
        if key not in self._sessions:
            self._sessions[key] = self.client.session()
        out: list[int] = []
        try:
            for piece in self._sessions[key].help(tokens=ctx, max_tokens=n, temperature=self.temperature, seed=seed):
                out.append(piece.token_id)
        except CloudError:
            self.stats.failures += 1
        self.stats.calls += 1
        self.stats.tokens += len(out)
        return out

    def close(self):
        for key in list(self._sessions):
            self.end_sample(key)
        self.client.close()


def make_helper(llm, tokenizer, *, temperature: float = 0.7):
    """The helper LLM: an HF checkpoint folder (in process), a loaded model, or a cloud
    target "grpc://host:port" / a CloudClient."""
    if isinstance(llm, str) and llm.startswith("grpc://"):
        return CloudLLM(llm[len("grpc://"):], tokenizer, temperature=temperature), None
    if hasattr(llm, "session") and hasattr(llm, "info"):  # a CloudClient
        return CloudLLM(llm, tokenizer, temperature=temperature), None
    model = llm if hasattr(llm, "generate") else load_checkpoint(llm, what="LLM")[0]
    return LocalLLM(model, tokenizer, temperature=temperature), model

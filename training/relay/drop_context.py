"""GRPO for command_context="drop": one forward pass that sees a rollout as the device did.

On the device (edge/decode_loop.py) and in GRPO's rollout (grpo.py), a command that brought
LLM tokens leaves the SLM's context: the LLM's tokens take the command's place, and every
later token is decoded without it. TRL scores a rollout with one causal forward pass over
prompt + completion, where the command would still be visible. This module gives that pass
the device's view instead: an attention mask in which the tokens after a called command do
not see it, and position ids that continue as if it had never been written. The command's
own tokens keep their context, so the decision to call and the N chosen get their gradient.

Which commands left the context is the rollout's record (RelayRollout.dropped_by_row, by
the row's token ids), not a guess from the ids: a call that failed or brought nothing leaves
its command in the context, as on the device, and the ids alone cannot tell that call from
one that worked (tests/test_grpo_drop.py). Without a record (a view used on its own), the
rule read from the ids is used: a well-formed command among the first `max_calls`,
followed by at least one token.
"""

from __future__ import annotations

import torch

from relayllm.protos.grammar import command_at_end_of_ids
from relayllm.training.errors import TrainingError


def called_commands(ids: list[int], open_id: int, close_id: int, decode, max_calls: int) -> list[tuple[int, int]]:
    """(start, end) index pairs, end inclusive, of the commands in `ids` that got a call."""
    spans, start = [], None
    for i, t in enumerate(ids):
        if len(spans) >= max_calls:
            break
        if t == open_id:
            start = i
        elif t == close_id and start is not None:
            if i + 1 < len(ids) and command_at_end_of_ids(ids[start: i + 1], open_id, close_id, decode):
                spans.append((start, i))
            start = None
    return spans


def drop_view(input_ids: torch.Tensor, attention_mask: torch.Tensor, spans: list[list[tuple[int, int]]]):
    """(4-D boolean attention mask, position ids) for rows whose `spans` (indices into the
    row) leave the context of every later token. Padding (attention_mask 0) is never seen;
    a padding row sees itself only (an empty row would give NaN)."""
    b, t = input_ids.shape
    device = input_ids.device
    valid = attention_mask.bool()
    allowed = torch.tril(torch.ones(t, t, dtype=torch.bool, device=device)).unsqueeze(0) & valid[:, None, :]
    removed = torch.zeros(b, t, dtype=torch.long, device=device)  # dropped tokens before each position
    for row, row_spans in enumerate(spans):
        for start, end in row_spans:
            allowed[row, end + 1:, start: end + 1] = False
            removed[row, end + 1:] += end - start + 1
    eye = torch.eye(t, dtype=torch.bool, device=device).unsqueeze(0)
    allowed |= eye & ~valid[:, :, None]
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0) - removed
    return allowed.unsqueeze(1), positions


class DropView:
    """Wraps the policy (or the KL reference) for TRL's scoring pass: same call, the drop view.
    `dropped`: the rollout's record of the commands each row dropped (row ids -> (start, end)
    spans); every row scored must be in it. None: the spans are read from the ids."""

    def __init__(self, model, tokenizer, open_id: int, close_id: int, max_calls: int, dropped: dict | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.open_id, self.close_id, self.max_calls = open_id, close_id, max_calls
        self.dropped = dropped

    def around(self, model) -> "DropView":
        """The same view over another model (the policy, or the KL reference)."""
        return DropView(model, self.tokenizer, self.open_id, self.close_id, self.max_calls, self.dropped)

    def __getattr__(self, name):
        return getattr(self.model, name)

    def spans(self, row: list[int]) -> list[tuple[int, int]]:
        """The commands of one row (its ids, padding removed) that left the context."""
        if self.dropped is None:
            return called_commands(row, self.open_id, self.close_id, self.tokenizer.decode, self.max_calls)
        try:
            return self.dropped[tuple(row)]
        except KeyError:
            raise TrainingError("drop view: a scored row that no rollout of this generation wrote "
                                "(its dropped commands are unknown)") from None

    def __call__(self, input_ids, attention_mask, **kwargs):
        rows = [[int(x) for x, m in zip(r, a) if m] for r, a in zip(input_ids.tolist(), attention_mask.tolist())]
        offsets = [int((a == 0).sum()) if a[0] == 0 else 0 for a in attention_mask]  # left padding
        spans = [[(s + off, e + off) for s, e in self.spans(r)] for r, off in zip(rows, offsets)]
        mask, positions = drop_view(input_ids, attention_mask, spans)
        return self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions, **kwargs)


def drop_context_trainer_class():
    """GRPOTrainer whose scoring passes (policy and reference) see commands dropped."""
    from trl import GRPOTrainer

    class DropContextGRPOTrainer(GRPOTrainer):
        relay_view: DropView | None = None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kw):
            return super()._get_per_token_logps_and_entropies(self.relay_view.around(model), input_ids, attention_mask, logits_to_keep,
                                                              *args, **kw)

    return DropContextGRPOTrainer

"""Batched decoding for GRPO's rollouts: one KV cache for rows that grow at different paces.

Relay rollouts do not grow in lockstep: at a step one row adds the token it sampled, another
adds a call's N tokens at once, a third has ended, and in command_context="drop" a row takes
its command back out of its context. `PaddedBatch` runs all of them through one forward pass
per step:

1. Every forward appends a chunk as wide as the longest feed to every row of one HF cache;
   a row's feed sits at the right end of its chunk (left padding), so its last token is the
   chunk's last position.
2. A 4-D attention mask says which cache slots each new token sees: its own row's slots that
   hold its context, causally. Padding never becomes context; a dropped command's slots leave
   it (`cut`) as if they had never been written. Each position sees itself, so a padding
   position never has an empty row (which would give NaN and spread through the values).
3. Position ids count only what a row's context holds, so a row's tokens get the positions
   they get when the row is decoded alone (training/relay/grpo.py `rollout_one`, which crops
   its own cache instead); greedy, both write the same tokens (tests/test_grpo_batched.py).
4. When half the rows have finished, the cache keeps only the rest (`finish`).

Not here: the protocol (what to feed, when to call, what to drop): grpo.py RelayRollout.
"""

from __future__ import annotations

import torch


class PaddedBatch:
    """Rows 0..n-1 of a batched decode on `model` (an HF causal LM)."""

    def __init__(self, model, rows: int, pad_id: int):
        self.model, self.pad = model, pad_id
        self.device = model.device
        self.dtype = next(model.parameters()).dtype
        self.cache = None
        self.row_of = {r: r for r in range(rows)}  # a row's index in the cache's batch
        self.valid = torch.zeros(rows, 0, dtype=torch.bool)  # per cache slot: context of its row
        self.slots: dict[int, list[int]] = {r: [] for r in range(rows)}  # a row's context slots, in order
        self.finished: set[int] = set()

    def cut(self, row: int, k: int) -> None:
        """The last `k` tokens of the row's context leave it (a dropped command)."""
        if k <= 0:
            return
        b = self.row_of[row]
        for slot in self.slots[row][-k:]:
            self.valid[b, slot] = False
        del self.slots[row][-k:]

    def finish(self, row: int) -> None:
        """The row has ended; once half the rows have, the cache drops them."""
        self.finished.add(row)
        done = [r for r in self.row_of if r in self.finished]
        if len(done) * 2 < len(self.row_of) or len(done) == len(self.row_of):
            return
        keep = sorted((r for r in self.row_of if r not in self.finished), key=self.row_of.get)
        index = torch.tensor([self.row_of[r] for r in keep])
        self.cache.batch_select_indices(index.to(self.device))
        self.valid = self.valid[index]
        self.row_of = {r: i for i, r in enumerate(keep)}
        for r in done:
            del self.slots[r]

    def forward(self, feeds: dict[int, list[int]], keep: int = 1) -> dict[int, torch.Tensor]:
        """Appends each row's feed (rows not in `feeds` get padding) in one forward pass.
        Returns, for each fed row, the logits of its last min(len(feed), keep) tokens."""
        batch, past = self.valid.shape
        width = max(len(f) for f in feeds.values())
        ids = torch.full((batch, width), self.pad, dtype=torch.long)
        new = torch.zeros(batch, width, dtype=torch.bool)
        positions = torch.zeros(batch, width, dtype=torch.long)
        for row, feed in feeds.items():
            b, n = self.row_of[row], len(feed)
            ids[b, width - n:] = torch.tensor(feed)
            new[b, width - n:] = True
            start = len(self.slots[row])
            positions[b, width - n:] = torch.arange(start, start + n)
            positions[b, : width - n] = start  # padding: any position (nothing ever sees it)
            self.slots[row].extend(range(past + width - n, past + width))
        for row, b in self.row_of.items():
            if row not in feeds:
                positions[b] = len(self.slots[row])
        self.valid = torch.cat([self.valid, new], 1)
        k = torch.arange(past + width)
        q = past + torch.arange(width)
        allowed = self.valid[:, None, :] & (k[None, None, :] <= q[None, :, None])
        allowed |= (k[None, None, :] == q[None, :, None])
        mask = torch.zeros(allowed.shape, dtype=self.dtype).masked_fill(~allowed, torch.finfo(self.dtype).min)
        res = self.model(input_ids=ids.to(self.device), attention_mask=mask[:, None].to(self.device),
                         position_ids=positions.to(self.device), past_key_values=self.cache, use_cache=True,
                         logits_to_keep=min(keep, width))
        self.cache = res.past_key_values
        logits = res.logits
        return {row: logits[self.row_of[row], logits.shape[1] - min(len(feed), keep):]
                for row, feed in feeds.items()}

"""Next-item training batches (SequenceBatch) cut from the time-ordered sequences of the training
split (`PreparedDataset.sequences`), one example per user and epoch, as SASRec trains: the last
`max_len + 1` items of a user give `max_len` (input, next item) positions. Whole batches by one
vectorized gather over the (indptr, items) arrays, no per-user Python; users shuffled by the
shared epoch permutation and sharded as every loader is (epochs.py: equal batch counts per rank,
an epoch a function of (seed, epoch), so resuming mid-epoch needs no loader state).
"""

from __future__ import annotations

import numpy as np
import torch

from recscale.data.loading.batch import PAD, SequenceBatch
from recscale.data.loading.epochs import EpochLoader


def last_items(indptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor, length: int) -> torch.Tensor:
    """(B, length) int64: the last `length` items of each user's sequence, right-aligned, PAD on the
    left where a sequence is shorter."""
    ends = indptr[users + 1]  # (B,)
    positions = ends[:, None] - length + torch.arange(length, device=indptr.device)  # (B, length)
    inside = positions >= indptr[users][:, None]
    gathered = items[positions.clamp_min(0)].to(torch.int64)
    return torch.where(inside, gathered, torch.full_like(gathered, PAD))


def next_item_batch(indptr: torch.Tensor, items: torch.Tensor, users: torch.Tensor, max_len: int) -> SequenceBatch:
    """Inputs and next-item targets of the users' last `max_len + 1` items."""
    window = last_items(indptr, items, users, max_len + 1)  # (B, L + 1)
    inputs, targets = window[:, :-1], window[:, 1:]
    targets = torch.where(inputs == PAD, torch.full_like(targets, PAD), targets)  # nothing precedes it
    return SequenceBatch(users, inputs, targets)


class SequenceLoader(EpochLoader):
    """Users with at least two training items (one input, one target), shuffled, in batches."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray, batch_size: int, max_len: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.indptr = torch.from_numpy(np.asarray(indptr, dtype=np.int64)).to(self.device)
        self.items = torch.from_numpy(np.asarray(items)).to(self.device)
        self.users = torch.from_numpy(np.flatnonzero(np.diff(indptr) >= 2)).to(self.device)
        self.max_len = max_len
        super().__init__(self.users.numel(), batch_size, seed, shuffle, drop_last, rank, world_size)
        self.device = torch.device(device)

    def __iter__(self):
        users = self.users[self._indices().to(self.device)]
        for s in self._slices():
            yield next_item_batch(self.indptr, self.items, users[s], self.max_len)

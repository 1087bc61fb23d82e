"""Vectorized negative sampling for training, with an explicit torch.Generator (never the global seed).
"""

from __future__ import annotations

import torch

from recscale.data.dataset.keys import positive_keys


class NegativeSampler:
    """Uniform negatives for (user, item) positives, drawn exactly and without a rejection loop.

    With the positive keys sorted, `keys[j] - j` is non-decreasing, and for a user whose positives
    occupy keys[lo:hi] the number of its positives below item x is found by one `searchsorted` of
    that sequence. So the k-th item that is not a positive of the user (k uniform in [0, free)) is
    computed directly: the work per draw is fixed, however few items a user has left. Users with no
    item left (`free == 0`) cannot be sampled for; callers leave them out (PairLoader does)."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int):
        self.n_items = n_items
        self.keys = positive_keys(users, items, n_items)  # sorted, unique
        device = self.keys.device
        self.adjusted = self.keys - torch.arange(self.keys.numel(), device=device)
        counts = torch.bincount(self.keys // n_items, minlength=n_users)
        self.starts = torch.cumsum(counts, 0) - counts  # (U,) first key of each user
        self.free = n_items - counts                     # (U,) items that are not positives

    def sample(self, users: torch.Tensor, generator: torch.Generator, chunk: int = 1 << 20) -> torch.Tensor:
        """One uniform non-positive item per entry of `users` (independent draws), `chunk` draws at a
        time: the temporaries stay small, and the draws are those of one call (the generator's
        stream is consumed in order)."""
        users = users.to(torch.int64)
        out = torch.empty_like(users)
        for start in range(0, users.numel(), chunk):
            part = users[start:start + chunk]
            free = self.free[part]
            u = torch.rand(part.shape, generator=generator, device=part.device, dtype=torch.float64)
            k = torch.minimum((u * free).to(torch.int64), free - 1)  # rank among the user's free items
            lo = self.starts[part]
            out[start:start + chunk] = k + torch.searchsorted(self.adjusted, part * self.n_items - lo + k, right=True) - lo
        return out

"""Vectorized negative sampling with an explicit torch.Generator (never the global seed).

A user's positives are kept as one sorted int64 tensor of keys `user * n_items + item`; whether a
candidate is a positive is then one `searchsorted` over the whole batch, with no per-example Python.
"""

from __future__ import annotations

import torch

from recscale.errors import RecscaleError


def positive_keys(users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Sorted, unique keys of the (user, item) positives."""
    keys = users.to(torch.int64) * n_items + items.to(torch.int64)
    return torch.unique(keys)  # sorted


def is_positive(keys: torch.Tensor, users: torch.Tensor, items: torch.Tensor, n_items: int) -> torch.Tensor:
    """Boolean mask: is (users[i], items[i]) among the positives whose sorted keys are `keys`?"""
    query = users.to(torch.int64) * n_items + items.to(torch.int64)
    if keys.numel() == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    pos = torch.searchsorted(keys, query).clamp_(max=keys.numel() - 1)
    return keys[pos] == query


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


def _first_occurrence(rows: torch.Tensor) -> torch.Tensor:
    """Mask of entries that are the first occurrence of their value within their row."""
    order = torch.sort(rows, dim=1, stable=True)
    dup_sorted = torch.zeros_like(rows, dtype=torch.bool)
    dup_sorted[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
    dup = torch.empty_like(dup_sorted).scatter_(1, order.indices, dup_sorted)
    return ~dup


NEGATIVE_CHUNK_USERS = 1 << 14  # bounds the candidate temporaries (about 40 MB per million candidates)


def sample_distinct_negatives(keys: torch.Tensor, users: torch.Tensor, n_items: int, n: int,
                              generator: torch.Generator) -> torch.Tensor:
    """For each (distinct) user, `n` distinct items that are not its positives: shape (len(users), n).

    Draws a block of candidates per user and keeps the first `n` valid ones; users left short are
    drawn again with a larger block (rare); a user with fewer than `n` non-positives is an error.
    Users are processed in chunks so that memory stays flat at ml-20m scale.
    """
    users = users.to(torch.int64)
    out = torch.empty((users.numel(), n), dtype=torch.int64)
    if n == 0 or users.numel() == 0:
        return out
    for start in range(0, users.numel(), NEGATIVE_CHUNK_USERS):
        chunk = slice(start, start + NEGATIVE_CHUNK_USERS)
        out[chunk] = distinct_negatives_chunk(keys, users[chunk], n_items, n, generator)
    return out


def distinct_negatives_chunk(keys: torch.Tensor, users: torch.Tensor, n_items: int, n: int,
                             generator: torch.Generator) -> torch.Tensor:
    """`sample_distinct_negatives` for one chunk of users; `keys` must hold at least those users'
    positives (the streaming prepare passes exactly theirs)."""
    out = torch.empty((users.numel(), n), dtype=torch.int64)
    lo = torch.searchsorted(keys, users * n_items)
    hi = torch.searchsorted(keys, (users + 1) * n_items)
    free = n_items - (hi - lo)
    if bool((free < n).any()):
        fewest = int(free.min())
        raise RecscaleError(f"--test-negatives: {n} asked, but a user has only {fewest} of the {n_items} items left "
                            f"that it has not interacted with; ask for at most {fewest}")
    pending = torch.arange(users.numel())
    width = n + max(8, n // 2)
    while pending.numel():
        sub = users[pending]
        if width >= 4 * n_items:
            # Exhaustive fallback: every item once, in random order.
            cand = torch.argsort(torch.rand((sub.numel(), n_items), generator=generator), dim=1)
        else:
            cand = torch.randint(n_items, (sub.numel(), width), generator=generator)
        ok = _first_occurrence(cand) & ~is_positive(keys, sub[:, None].expand_as(cand), cand, n_items)
        done = ok.sum(dim=1) >= n
        if bool(done.any()):
            rows = torch.nonzero(done).squeeze(1)
            # Stable sort puts each row's valid candidates first, in their drawn order.
            take = torch.sort((~ok[rows]).to(torch.int8), dim=1, stable=True).indices[:, :n]
            out[pending[rows]] = torch.gather(cand[rows], 1, take)
        pending = pending[~done]
        width *= 2
    return out

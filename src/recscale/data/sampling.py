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


def sample_negatives(keys: torch.Tensor, users: torch.Tensor, n_items: int,
                     generator: torch.Generator) -> torch.Tensor:
    """One uniform negative item per entry of `users` (with replacement across entries), redrawn
    until it is not a positive of that user. Each round redraws only the rejected entries."""
    items = torch.randint(n_items, users.shape, generator=generator, device=users.device)
    pending = torch.nonzero(is_positive(keys, users, items, n_items)).squeeze(1)
    while pending.numel():
        redraw = torch.randint(n_items, pending.shape, generator=generator, device=users.device)
        items[pending] = redraw
        pending = pending[is_positive(keys, users[pending], redraw, n_items)]
    return items


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
        out[chunk] = _distinct_negatives_block(keys, users[chunk], n_items, n, generator)
    return out


def _distinct_negatives_block(keys: torch.Tensor, users: torch.Tensor, n_items: int, n: int,
                              generator: torch.Generator) -> torch.Tensor:
    out = torch.empty((users.numel(), n), dtype=torch.int64)
    lo = torch.searchsorted(keys, users * n_items)
    hi = torch.searchsorted(keys, (users + 1) * n_items)
    free = n_items - (hi - lo)
    if bool((free < n).any()):
        worst = int(torch.argmin(free))
        raise RecscaleError(f"--test-negatives: user {int(users[worst])} has only {int(free[worst])} items "
                            f"it has not interacted with; ask for at most that many negatives")
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

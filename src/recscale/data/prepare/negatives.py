"""The NCF evaluation negatives: for each evaluated user, `n` distinct items that are none of its
positives, drawn with an explicit torch.Generator in fixed chunks of users (the streaming engine
draws the same chunks).
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from recscale.data.dataset.keys import is_positive, positive_keys
from recscale.errors import RecscaleError


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


def sample_eval_negatives(parts: dict[str, pl.DataFrame], n_items: int, n: int, seed: int) -> dict[str, pl.DataFrame]:
    """For each NCF evaluation split, `n` distinct items per user that are none of its positives
    in any split, drawn with a generator seeded by `seed` (validation and test draw in turn)."""
    everything = pl.concat([p.select("user", "item") for p in parts.values()])
    keys = positive_keys(torch.from_numpy(everything["user"].to_numpy(writable=True)),
                         torch.from_numpy(everything["item"].to_numpy(writable=True)), n_items)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("valid", "test"):
        if name not in parts:
            continue
        users = torch.from_numpy(parts[name]["user"].to_numpy().astype(np.int64))
        negatives = sample_distinct_negatives(keys, users, n_items, n, generator)
        out[f"{name}_negatives"] = pl.DataFrame({
            "user": users.repeat_interleave(n).numpy().astype(np.int32),
            "item": negatives.reshape(-1).numpy().astype(np.int32)})
    return out

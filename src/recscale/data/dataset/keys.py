"""One int64 key per (user, item) pair (`user * n_items + item`): positives kept as one sorted tensor
of keys answer membership by binary search.
"""

from __future__ import annotations

import torch


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

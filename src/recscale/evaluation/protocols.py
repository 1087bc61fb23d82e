"""Evaluation protocols over a prepared dataset.

- sampled ranking (`ncf`): each held-out positive ranked among its own sampled negatives.
- full ranking (`vae`, `random`): every item ranked, the user's known input items masked out; the
  held-out items are the relevant ones.

Both keep each user's metric values and sum them exactly rounded at the end (metrics.exact_sum),
so results are bit-identical for any batch size; a multi-process run all-reduces those sums and
counts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recscale.data.prepared import PreparedDataset
from recscale.evaluation.metrics import exact_sum, per_user_metrics
from recscale.models.base import Recommender

DEFAULT_KS = (10, 20, 50, 100)


def dense_rows(matrix: sp.csr_matrix, rows: np.ndarray, device) -> torch.Tensor:
    """Rows of a CSR matrix as a dense float tensor, built only for these rows."""
    return torch.from_numpy(matrix[rows].toarray()).to(device)


def validation_split(data: PreparedDataset) -> str:
    """The split that model selection reads: validation when the dataset has one."""
    return "valid" if data.has("valid") or data.has("valid_heldout") else "test"


def evaluation_sets(data: PreparedDataset, split: str) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix]:
    """(users to evaluate, input rows the model reads and that are masked, relevant rows)."""
    if data.protocol == "vae":
        users = data.group_users(split).numpy()
        return users, data.user_items(f"{split}_foldin"), data.user_items(f"{split}_heldout")
    inputs = ("train",) if split == "valid" or not data.has("valid") else ("train", "valid")
    target = data.user_items(split)
    users = np.flatnonzero(np.diff(target.indptr))
    return users, data.user_items(*inputs), target


def _accumulate(total: dict, part: dict) -> None:
    for name, values in part.items():
        total.setdefault(name, []).append(values)


def _finish(total: dict) -> dict[str, float]:
    values = {name: torch.cat(parts) for name, parts in total.items()}
    users = next(iter(values.values())).numel() if values else 0
    out = {name: exact_sum(v) / users if users else float("nan") for name, v in values.items()}
    out["users"] = users
    return out


@torch.no_grad()
def evaluate(model: Recommender, data: PreparedDataset, split: str, ks=DEFAULT_KS,
             device="cpu", batch_size: int = 1024) -> dict[str, float]:
    model.eval()
    ks = tuple(sorted(ks))
    if data.protocol == "ncf":
        return sampled_ranking(model, data, split, ks, device, batch_size)
    return full_ranking(model, data, split, ks, device, batch_size)


def sampled_ranking(model, data, split, ks, device, batch_size) -> dict[str, float]:
    users, positives = data.columns(split, "user", "item")
    neg_users, negatives = data.negatives(split)
    if not torch.equal(neg_users, users):
        raise ValueError(f"{data.root}: {split} negatives are not aligned with the {split} split")
    history = data.user_items("train") if model.needs_history else None
    total: dict = {}
    for start in range(0, users.numel(), batch_size):
        u = users[start:start + batch_size]
        candidates = torch.cat([positives[start:start + batch_size, None], negatives[start:start + batch_size]], 1)
        h = dense_rows(history, u.numpy(), device) if history is not None else None
        scores = model.score(u.to(device), h, candidates.to(device))  # (B, 1 + N)
        relevant = torch.zeros_like(candidates, dtype=torch.bool)
        relevant[:, 0] = True
        _accumulate(total, per_user_metrics(scores.float(), relevant.to(device), ks))
    return _finish(total)


def full_ranking(model, data, split, ks, device, batch_size) -> dict[str, float]:
    users, inputs, target = evaluation_sets(data, split)
    total: dict = {}
    for start in range(0, users.size, batch_size):
        u = users[start:start + batch_size]
        history = dense_rows(inputs, u, device)  # (B, I)
        scores = model.score(torch.from_numpy(u).to(device), history if model.needs_history else None)
        scores = scores.float().masked_fill(history > 0, float("-inf"))
        relevant = dense_rows(target, u, device) > 0
        _accumulate(total, per_user_metrics(scores, relevant, ks))
    return _finish(total)

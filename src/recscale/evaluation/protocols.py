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
from recscale.evaluation.metrics import exact_sum, metric_names, per_user_metrics, top_k
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


class _Coverage:
    """Which items reached some evaluated user's top K, for each K (union over batches)."""

    def __init__(self, n_items: int, ks, device):
        self.ks, self.shown = ks, torch.zeros((len(ks), n_items), dtype=torch.bool, device=device)

    def add(self, items: torch.Tensor, top: torch.Tensor) -> None:
        """items: (B, C) catalog ids of the candidates; top: (B, >= max K) candidate indices."""
        ranked = torch.gather(items, 1, top) if items is not None else top
        for i, k in enumerate(self.ks):
            self.shown[i, ranked[:, :k].reshape(-1)] = True


def _finish(total: dict, ks, coverage: _Coverage, reduce=None) -> dict[str, float]:
    """Averages from the per-user values. With `reduce` (an all-reduce over ranks), the exactly
    rounded local sums and user counts (and the coverage sets) are summed across processes first."""
    names = metric_names(ks)
    values = {name: torch.cat(total[name]) if name in total else torch.zeros(0, dtype=torch.float64)
              for name in names}
    sums = torch.tensor([exact_sum(values[n]) for n in names] + [float(values[names[0]].numel())],
                        dtype=torch.float64)
    shown = coverage.shown.to(torch.float64).cpu()
    if reduce is not None:
        sums, shown = reduce(sums), reduce(shown)
    users = int(sums[-1])
    out = {name: float(sums[i]) / users if users else float("nan") for i, name in enumerate(names)}
    for i, k in enumerate(ks):
        out[f"coverage@{k}"] = float((shown[i] > 0).sum()) / shown.shape[1]
    out["users"] = users
    return out


@torch.no_grad()
def evaluate(model: Recommender, data: PreparedDataset, split: str, ks=DEFAULT_KS, device="cpu",
             batch_size: int = 1024, rank: int = 0, world_size: int = 1, reduce=None) -> dict[str, float]:
    """Metrics of `model` on `split`. With several processes, each evaluates every
    `world_size`-th user from `rank` on, and `reduce` sums their totals."""
    model.eval()
    ks = tuple(sorted(ks))
    shard = slice(rank, None, world_size)
    if data.protocol == "ncf":
        return sampled_ranking(model, data, split, ks, device, batch_size, shard, reduce)
    return full_ranking(model, data, split, ks, device, batch_size, shard, reduce)


def sampled_ranking(model, data, split, ks, device, batch_size, shard=slice(None), reduce=None) -> dict[str, float]:
    users, positives = data.columns(split, "user", "item")
    neg_users, negatives = data.negatives(split)
    if not torch.equal(neg_users, users):
        raise ValueError(f"{data.root}: {split} negatives are not aligned with the {split} split")
    users, positives, negatives = users[shard], positives[shard], negatives[shard]
    history = data.user_items("train") if model.needs_history else None
    total: dict = {}
    coverage = _Coverage(data.n_items, ks, device)
    for start in range(0, users.numel(), batch_size):
        u = users[start:start + batch_size]
        candidates = torch.cat([positives[start:start + batch_size, None], negatives[start:start + batch_size]], 1)
        h = dense_rows(history, u.numpy(), device) if history is not None else None
        scores = model.score(u.to(device), h, candidates.to(device))  # (B, 1 + N)
        relevant = torch.zeros_like(candidates, dtype=torch.bool, device=device)
        relevant[:, 0] = True
        top = top_k(scores.float(), relevant, max(ks))
        _accumulate(total, per_user_metrics(scores.float(), relevant, ks, top))
        coverage.add(candidates.to(device), top)
    return _finish(total, ks, coverage, reduce)


def full_ranking(model, data, split, ks, device, batch_size, shard=slice(None), reduce=None) -> dict[str, float]:
    users, inputs, target = evaluation_sets(data, split)
    users = users[shard]
    total: dict = {}
    coverage = _Coverage(data.n_items, ks, device)
    for start in range(0, users.size, batch_size):
        u = users[start:start + batch_size]
        history = dense_rows(inputs, u, device)  # (B, I)
        scores = model.score(torch.from_numpy(u).to(device), history if model.needs_history else None)
        scores = scores.float().masked_fill(history > 0, float("-inf"))
        relevant = dense_rows(target, u, device) > 0
        top = top_k(scores, relevant, max(ks))
        _accumulate(total, per_user_metrics(scores, relevant, ks, top))
        coverage.add(None, top[relevant.any(dim=1)])
    return _finish(total, ks, coverage, reduce)

"""The tie rule, the one order of equal scores everywhere in recscale (evaluation, recommend and the
server): among equal scores, non-relevant candidates rank first, then lower candidate index. A
model that scores everything alike therefore gets no credit, and the order is exact and
deterministic (no dependence on torch.topk's tie order or the batch size). It sits at the lowest
layer so that serving ranks as evaluation does without importing the evaluation stack."""

from __future__ import annotations

import torch

_LOW31 = (1 << 31) - 1


def _orderable(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 with the same order (NaN counts as -inf)."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    bits = scores.view(torch.int32)
    return (bits ^ ((bits >> 31) & _LOW31)).to(torch.int64)


def ranking_keys(scores: torch.Tensor, relevant: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """int64 keys whose descending order is the ranking with our tie rule; all keys are distinct.
    `index` gives each column's candidate index when `scores` holds a subset of the candidates."""
    if index is None:
        index = torch.arange(scores.shape[1], device=scores.device)
    return (_orderable(scores) << 32) | ((~relevant).to(torch.int64) << 31) | (_LOW31 - index)


TIE_MARGIN = 16


def top_k(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) candidate indices of the top k under the tie rule, exactly.

    A float topk of k + TIE_MARGIN candidates contains every tie of the k-th score unless the
    (k + margin)-th score equals it; only those rows (massive ties) are ranked with keys over all
    candidates. Everything else is keyed on the few candidates alone."""
    n = scores.shape[1]
    k = min(k, n)
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    width = min(n, k + TIE_MARGIN)
    values, index = torch.topk(scores, width, dim=1)  # (B, width)
    keys = ranking_keys(values, torch.gather(relevant, 1, index), index)
    top = torch.gather(index, 1, torch.topk(keys, k, dim=1).indices)  # (B, k)
    spill = (values[:, k - 1] == values[:, width - 1]) if width < n else torch.zeros_like(values[:, 0], dtype=torch.bool)
    if bool(spill.any()):
        rows = torch.nonzero(spill).squeeze(1)
        top[rows] = torch.topk(ranking_keys(scores[rows], relevant[rows]), k, dim=1).indices
    return top

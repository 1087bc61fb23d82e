"""Ranking metrics as pure vectorized functions.

Assumptions, stated once:
- Binary relevance. Each row is one user: `scores` (B, C) over C candidates and `relevant` (B, C)
  marks the user's held-out items. Rows with no relevant item are not counted (callers drop them).
- Ties are broken against the user (the tie rule, ranking.py): among equal scores, non-relevant
  candidates rank first, then lower candidate index.
- HR@K: 1 if any relevant item is in the top K. Recall@K: hits / min(K, n_relevant), as in
  Mult-VAE (Liang et al. 2018); recall_recbole@K: hits / n_relevant, RecBole's definition (lower
  for users with more than K held-out items). Precision@K: hits / K. NDCG@K: DCG with 1/log2(rank + 1) gains over
  the IDCG of min(K, n_relevant) hits. MRR: 1 / rank of the first relevant item in the full ranking.
  MAP@K: sum over relevant ranks r <= K of precision@r, divided by min(K, n_relevant).
- Catalog coverage@K (protocols.py): the fraction of the catalog that appears in at least one
  evaluated user's top K (over all items under full ranking; over the candidates under sampling).
"""

from __future__ import annotations

import math

import torch

from recscale.ranking import top_k  # the tie rule (ranking.py)


def first_relevant_rank(scores: torch.Tensor, relevant: torch.Tensor) -> torch.Tensor:
    """(B,) 1-based rank of the best-ranked relevant candidate (rows need one relevant item).
    By the tie rule it follows every higher score and every non-relevant candidate of equal score."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    best = torch.where(relevant, scores, float("-inf")).amax(dim=1, keepdim=True)
    ahead = (scores > best) | ((scores == best) & ~relevant)
    return ahead.sum(dim=1) + 1


def _discounts(k: int, device) -> torch.Tensor:
    return 1.0 / torch.log2(torch.arange(2, k + 2, device=device, dtype=torch.float64))


def hit_rate(hits: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].any(dim=1).double()


def recall(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(dim=1).double() / n_relevant.clamp(max=k).double()


def recall_recbole(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(dim=1).double() / n_relevant.double()


def precision(hits: torch.Tensor, k: int) -> torch.Tensor:
    return hits[:, :k].sum(dim=1).double() / k


def ndcg(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k].double()
    discounts = _discounts(top.shape[1], hits.device)
    dcg = (top * discounts).sum(dim=1)
    ideal = torch.cumsum(_discounts(k, hits.device), 0)
    idcg = ideal[n_relevant.clamp(min=1, max=k) - 1]
    return dcg / idcg


def average_precision(hits: torch.Tensor, n_relevant: torch.Tensor, k: int) -> torch.Tensor:
    top = hits[:, :k].double()
    ranks = torch.arange(1, top.shape[1] + 1, device=hits.device, dtype=torch.float64)
    precision_at = torch.cumsum(top, dim=1) / ranks
    return (precision_at * top).sum(dim=1) / n_relevant.clamp(max=k).double()


def reciprocal_rank(first_rank: torch.Tensor) -> torch.Tensor:
    return 1.0 / first_rank.double()


def reciprocal_rank_at(hits: torch.Tensor, k: int) -> torch.Tensor:
    """1 / rank of the first relevant item among the top k, 0 when none is (RecBole's MRR@K)."""
    top = hits[:, :k]
    first = top.int().argmax(dim=1).double() + 1  # argmax: the first maximum
    return torch.where(top.any(dim=1), 1.0 / first, torch.zeros_like(first))


def metric_names(ks: tuple[int, ...]) -> list[str]:
    """The names per_user_metrics returns, in a fixed order (ranks must agree on it)."""
    return [f"{m}@{k}" for k in ks for m in ("hr", "recall", "recall_recbole", "precision", "ndcg", "map", "mrr")] + ["mrr"]


def per_user_metrics(scores: torch.Tensor, relevant: torch.Tensor, ks: tuple[int, ...],
                     top: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every metric at every K for each row that has a relevant item: name -> (U,) float64 on CPU.
    `top` may pass in top_k(scores, relevant, max(ks)) when the caller needs it too."""
    keep = relevant.any(dim=1)
    if top is None:
        top = top_k(scores, relevant, max(ks))
    scores, relevant, top = scores[keep], relevant[keep], top[keep]
    return metrics_from_hits(torch.gather(relevant, 1, top), relevant.sum(dim=1),
                             first_relevant_rank(scores, relevant), ks, relevant.shape[1])


def metrics_from_hits(hits: torch.Tensor, n_relevant: torch.Tensor, first_rank: torch.Tensor,
                      ks: tuple[int, ...], n_candidates: int) -> dict[str, torch.Tensor]:
    """Every metric at every K from what they depend on, for rows with a relevant item: `hits`
    (U, min(max K, C)) whether each of the top ranks is relevant, `n_relevant` (U,), `first_rank`
    (U,) the 1-based rank of the first relevant candidate in the whole ranking; name -> (U,) on CPU."""
    out = {}
    for named_k in ks:
        # past the number of candidates nothing changes (but precision still divides by K)
        k = min(named_k, n_candidates)
        out[f"hr@{named_k}"] = hit_rate(hits, k)
        out[f"recall@{named_k}"] = recall(hits, n_relevant, k)
        out[f"recall_recbole@{named_k}"] = recall_recbole(hits, n_relevant, k)
        out[f"precision@{named_k}"] = precision(hits, k) * k / named_k
        out[f"ndcg@{named_k}"] = ndcg(hits, n_relevant, k)
        out[f"map@{named_k}"] = average_precision(hits, n_relevant, k)
        out[f"mrr@{named_k}"] = reciprocal_rank_at(hits, k)
    out["mrr"] = reciprocal_rank(first_rank)
    return {name: value.cpu() for name, value in out.items()}


def exact_sum(values: torch.Tensor) -> float:
    """The exactly rounded sum (math.fsum): independent of order, hence of the batch size."""
    return math.fsum(values.tolist())


Z95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def interval_half_width(total: float, squares: float, n: int) -> float:
    """Half-width of the 95% interval of a mean over n users from the sum of the per-user values
    and of their squares: 1.96 x the standard error (sample standard deviation / sqrt(n)), the
    normal approximation; NaN for fewer than 2 users."""
    if n < 2:
        return float("nan")
    variance = max(0.0, (squares - total * total / n) / (n - 1))
    return Z95 * math.sqrt(variance / n)

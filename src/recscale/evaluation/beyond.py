"""Beyond accuracy: what the top-K lists shown to the evaluated users look like.

- novelty@K: the mean self-information -log2(p_i) of the recommended items, p_i the share of
  training users who interacted with item i (an item nobody had counts as one user's);
- arp@K: the average recommended popularity (training interactions of the items shown);
- ild@K: intra-list diversity, the mean cosine distance between the genre vectors of two items of
  one list (only where the dataset has genres);
- gini@K: the Gini coefficient of item exposure, how unequally the lists spread over the catalog
  (0: every item shown equally often, near 1: a few items everywhere).

Sums over users and exposure counts accumulate batch by batch and are summed across ranks, as the
accuracy metrics are, so the batch size never changes them.
"""

from __future__ import annotations

import math

import torch

from recscale.data.dataset.prepared import PreparedDataset


def gini(exposure: torch.Tensor) -> float:
    """Gini coefficient of non-negative counts (I,): 2 sum_i i x_(i) / (n sum x) - (n + 1) / n."""
    x = torch.sort(exposure.double()).values
    n, total = x.numel(), float(x.sum())
    if n == 0 or total == 0:
        return float("nan")
    ranks = torch.arange(1, n + 1, dtype=torch.float64)
    return float(2 * (ranks * x).sum() / (n * total) - (n + 1) / n)


class ListStats:
    """Accumulates novelty, ARP, ILD and exposure of ranked catalog ids, for each K."""

    def __init__(self, data: PreparedDataset, ks, device):
        counts = torch.from_numpy(data.item_counts()).to(device)  # (I,)
        self.ks, self.popularity = tuple(ks), counts
        self.information = -torch.log2(counts.clamp(min=1) / max(data.n_users, 1))  # (I,)
        self.genres = _genre_vectors(data, device)  # (I, G) unit rows, or None
        self.sums = torch.zeros(3 * len(self.ks) + 1, dtype=torch.float64, device=device)  # per K, then users
        self.exposure = torch.zeros((len(self.ks), counts.numel()), dtype=torch.float64, device=device)

    def add(self, ranked: torch.Tensor) -> None:
        """ranked: (B, >= max K) catalog ids, best first, of users that were evaluated."""
        for i, k in enumerate(self.ks):
            ids = ranked[:, :k]  # (B, k)
            self.exposure[i].index_add_(0, ids.reshape(-1), torch.ones(ids.numel(), dtype=torch.float64,
                                                                      device=ids.device))
            self.sums[3 * i] += self.information[ids].mean(1).sum()
            self.sums[3 * i + 1] += self.popularity[ids].mean(1).sum()
            if self.genres is not None and ids.shape[1] > 1:
                g = self.genres[ids]  # (B, k, G)
                similarity = g @ g.transpose(1, 2)  # (B, k, k), 1 on the diagonal for items with genres
                pairs = ids.shape[1] * (ids.shape[1] - 1)
                off_diagonal = similarity.sum((1, 2)) - similarity.diagonal(dim1=1, dim2=2).sum(1)
                self.sums[3 * i + 2] += (1 - off_diagonal / pairs).sum()
        self.sums[-1] += ranked.shape[0]

    def finish(self, reduce=None) -> dict:
        sums, exposure = self.sums.cpu(), self.exposure.cpu()
        if reduce is not None:
            sums, exposure = reduce(sums), reduce(exposure)
        users = float(sums[-1])
        out = {}
        for i, k in enumerate(self.ks):
            out[f"novelty@{k}"] = float(sums[3 * i]) / users if users else math.nan
            out[f"arp@{k}"] = float(sums[3 * i + 1]) / users if users else math.nan
            if self.genres is not None:
                out[f"ild@{k}"] = float(sums[3 * i + 2]) / users if users else math.nan
            out[f"gini@{k}"] = gini(exposure[i])
        return out


def _genre_vectors(data: PreparedDataset, device) -> torch.Tensor | None:
    genres = data.item_genres()
    if genres is None:
        return None
    values, offsets = genres
    lengths = torch.diff(torch.cat([offsets, torch.tensor([values.numel()])]))
    n_genres = int(values.max()) + 1 if values.numel() else 0
    if n_genres == 0:
        return None
    rows = torch.repeat_interleave(torch.arange(offsets.numel()), lengths)
    vectors = torch.zeros((offsets.numel(), n_genres), dtype=torch.float64)
    vectors[rows, values] = 1.0
    norms = vectors.norm(dim=1, keepdim=True)
    return (vectors / norms.clamp(min=1)).to(device)  # items without a genre: a zero row

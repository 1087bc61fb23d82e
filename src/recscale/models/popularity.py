"""Most-popular baseline: the floor every personalized model must clear."""

from __future__ import annotations

import dataclasses

import torch

from recscale.config.fields import Checked
from recscale.errors import RecscaleError
from recscale.models.base import DataShape, Output, Recommender, gather_candidates


@dataclasses.dataclass(frozen=True)
class PopularityConfig(Checked):
    pass


class Popularity(Recommender):
    """Scores every item by its number of training interactions, the same for every user."""

    Config = PopularityConfig
    closed_form = True

    def __init__(self, shape: DataShape, cfg: PopularityConfig | None = None):
        super().__init__()
        self.register_buffer("counts", torch.zeros(shape.n_items))

    def fit(self, user_items: torch.Tensor) -> None:
        """user_items: coalesced sparse COO (U, I) of training interactions."""
        self.counts = torch.bincount(user_items.indices()[1], minlength=self.counts.numel()).to(self.counts)

    def forward(self, batch, **schedule) -> Output:
        raise RecscaleError("Popularity is fitted in closed form; it has no training loss")

    @property
    def scores_new_users(self) -> bool:
        return True  # the same list for everyone

    def fold_in_scorer(self, history):
        return self.catalog_scorer(torch.zeros(history.shape[0], dtype=torch.long, device=history.device), None)

    def score(self, users, history, items=None):
        scores = self.counts.expand(users.shape[0], -1)  # (B, I)
        return gather_candidates(scores, items)

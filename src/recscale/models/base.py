"""The one interface every model follows.

    forward(batch, **schedule) -> Output     the training loss (DDP sees every parameter)
    score(users, history, items=None)        higher is better; (B, I) or (B, C) for candidates

`history` is the (B, I) dense float rows of what each user is known to have interacted with (the
training rows, or the fold-in rows of held-out users); models that do not read it declare
`needs_history = False` and receive None. Schedules (e.g. the KL weight) come in as keyword
arguments from the trainer: a model keeps no step counters, opens no files and picks no device.

Closed-form models (popularity, EASE) set `closed_form = True` and implement
`fit(user_items)` on a coalesced sparse COO tensor instead of being trained by steps.

Constructors take the dataset's shape (`DataShape`, built from meta.json by the caller) and the
model's own frozen Config dataclass. `train_defaults` holds the model's sensible TrainConfig values
(the papers' settings scaled to small data); the user's config file and flags override them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn


@dataclasses.dataclass(frozen=True)
class DataShape:
    n_users: int
    n_items: int
    user_dim: int = 32          # suggested embedding sizes (meta.json's rule)
    item_dim: int = 32
    n_genres: int = 0
    genre_dim: int = 16
    genre_values: torch.Tensor | None = None   # (nnz,) every item's genres, for nn.EmbeddingBag
    genre_offsets: torch.Tensor | None = None  # (I,)


class Output(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor | None = None


class Recommender(nn.Module):
    batch_kind: ClassVar[str] = "pairs"  # which loader feeds it: pairs, rows, tabular
    needs_history: ClassVar[bool] = False
    closed_form: ClassVar[bool] = False
    explicit_rows: ClassVar[bool] = False  # rows loaders feed ratings instead of 1/0
    train_defaults: ClassVar[dict[str, Any]] = {}

    @classmethod
    def default_train_settings(cls, counts: dict[str, int]) -> dict[str, Any]:
        """`train_defaults`, scaled to the dataset's counts (meta.json) where the model says how."""
        return dict(cls.train_defaults)

    def score(self, users: torch.Tensor, history: torch.Tensor | None,
              items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


PAIRS_PER_CHUNK = 1 << 19  # (user, item) pairs scored at once by pairwise models: bounds activation memory


def score_pairs_in_chunks(logits_fn, users: torch.Tensor, items: torch.Tensor | None, n_items: int) -> torch.Tensor:
    """Scores of pairwise models (NCF, embedding MLP) for candidates (B, C) or, with `items` None,
    the whole catalog, computed a few users at a time so memory stays bounded."""
    if items is None:
        items = torch.arange(n_items, device=users.device).expand(users.shape[0], -1)
    rows = max(1, PAIRS_PER_CHUNK // max(1, items.shape[1]))
    out = [logits_fn(users[s:s + rows, None].expand_as(items[s:s + rows]), items[s:s + rows])
           for s in range(0, users.shape[0], rows)]
    return torch.cat(out) if out else items.new_zeros(items.shape, dtype=torch.float32)


def gather_candidates(scores: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """Full-catalog scores (B, I) -> candidate scores (B, C), or unchanged without candidates."""
    return scores if items is None else torch.gather(scores, 1, items)

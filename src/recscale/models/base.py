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

    def score(self, users: torch.Tensor, history: torch.Tensor | None,
              items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def gather_candidates(scores: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """Full-catalog scores (B, I) -> candidate scores (B, C), or unchanged without candidates."""
    return scores if items is None else torch.gather(scores, 1, items)

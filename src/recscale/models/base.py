"""The one interface every model follows.

    forward(batch, **schedule) -> Output     the training loss (DDP sees every parameter)
    score(users, history, items=None)        higher is better; (B, I) or (B, C) for candidates

`history` is the (B, I) dense float rows of what each user is known to have interacted with (the
training rows, or the fold-in rows of held-out users); models that do not read it declare
`needs_history = False` and receive None. Schedules (e.g. the KL weight) come in as keyword
arguments from the trainer: a model keeps no step counters, opens no files and picks no device.

Closed-form models (popularity, EASE) set `closed_form = True` and implement
`fit(user_items)` on a coalesced sparse COO tensor instead of being trained by steps.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn


class Output(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor | None = None


class Recommender(nn.Module):
    batch_kind: ClassVar[str] = "pairs"  # which loader feeds it: pairs, rows, tabular
    needs_history: ClassVar[bool] = False
    closed_form: ClassVar[bool] = False

    def score(self, users: torch.Tensor, history: torch.Tensor | None,
              items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def gather_candidates(scores: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """Full-catalog scores (B, I) -> candidate scores (B, C), or unchanged without candidates."""
    return scores if items is None else torch.gather(scores, 1, items)

"""The autoencoder for collaborative filtering of the TensorFlow multi-GPU tutorial this project
descends from: a user's rating row in (scaled to [0, 1] by the maximum rating), two sigmoid encoder
layers (10 and 5 units), two sigmoid decoder layers back to the items, mean squared error, RMSProp.
The reconstruction is the score."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from recscale.data.batch import UserBatch
from recscale.models.base import DataShape, Output, Recommender, gather_candidates


@dataclasses.dataclass(frozen=True)
class AutoEncoderConfig:
    hidden: tuple[int, ...] = (10, 5)
    max_rating: float = 5.0


class AutoEncoder(Recommender):
    Config = AutoEncoderConfig
    batch_kind = "rows"
    needs_history = True
    explicit_rows = True
    train_defaults = {"batch_size": 64, "lr": 0.01, "epochs": 50, "optimizer": "rmsprop"}

    def __init__(self, shape: DataShape, cfg: AutoEncoderConfig = AutoEncoderConfig()):
        super().__init__()
        self.cfg = cfg
        widths = [shape.n_items, *cfg.hidden, *reversed(cfg.hidden[:-1]), shape.n_items]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def reconstruct(self, rows: torch.Tensor) -> torch.Tensor:
        x = rows / self.cfg.max_rating
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return x  # (B, I) in [0, 1]

    def forward(self, batch: UserBatch, **schedule) -> Output:
        out = self.reconstruct(batch.rows)
        return Output(F.mse_loss(out.float(), batch.rows / self.cfg.max_rating), out)

    def score(self, users, history, items=None):
        return gather_candidates(self.reconstruct(history), items)

"""The autoencoder for collaborative filtering of the TensorFlow multi-GPU tutorial this project
descends from: a user's rating row in (scaled to [0, 1] by the maximum rating), two sigmoid encoder
layers (10 and 5 units), two sigmoid decoder layers back to the items, mean squared error, RMSProp.
The reconstruction is the score.

With `sparse_input` (the default) the first layer reads the batch's nonzeros only, and the squared
error over every (user, item) cell is sum(out^2) - 2 sum_nz out x + sum_nz x^2, so the rating rows
are never made dense; the result equals the dense path's."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from recscale.config.fields import Checked, each, option, positive
from recscale.config.run import WIDTH
from recscale.data.loading.batch import UserBatch
from recscale.models.base import DataShape, Output, gather_candidates
from recscale.models.vae import RowModel, SparseInputLinear, item_stack


@dataclasses.dataclass(frozen=True)
class AutoEncoderConfig(Checked):
    hidden: tuple[int, ...] = option((10, 5), "encoder widths (the decoder mirrors all but the last)",
                                     check=each(WIDTH, allow_empty=False))
    max_rating: float = option(5.0, "ratings are divided by this", check=positive)
    sparse_input: bool = option(True, "first layer and loss from the nonzeros of each row (same results, "
                                "faster); false: dense rows")


class AutoEncoder(RowModel):
    Config = AutoEncoderConfig
    binary_rows = False
    train_defaults = {"batch_size": 64, "lr": 0.01, "epochs": 50, "optimizer": "rmsprop"}
    tune_space = {
        "hidden": {"type": "categorical", "choices": [[10, 5], [64, 16], [256, 64]]},
        "lr": {"type": "log", "low": 1e-3, "high": 1e-1},
        "batch_size": {"type": "categorical", "choices": [32, 64, 256]},
    }

    @classmethod
    def default_train_settings(cls, counts):
        return dict(cls.train_defaults)

    def __init__(self, shape: DataShape, cfg: AutoEncoderConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else self.Config()
        self.layers = item_stack([shape.n_items, *cfg.hidden, *reversed(cfg.hidden[:-1]), shape.n_items])
        for layer in self.layers:  # the tutorial's initialization: the layers' own defaults
            bound = 1 / layer.weight.shape[0 if isinstance(layer, SparseInputLinear) else 1] ** 0.5
            torch.nn.init.uniform_(layer.weight, -bound, bound)
            torch.nn.init.uniform_(layer.bias, -bound, bound)

    def _reconstruct(self, batch: UserBatch) -> torch.Tensor:
        return torch.sigmoid(self.layers[-1](self._hidden(batch)))  # (B, I) in [0, 1]

    def _first(self):
        return self.layers[0]

    def _hidden(self, batch: UserBatch) -> torch.Tensor:
        first = self._first()
        scale = 1.0 / self.cfg.max_rating
        if batch.sparse:
            x = first.sparse(batch.indices, batch.offsets, batch.values * scale)
        else:
            x = first.dense(batch.rows * scale)
        x = torch.sigmoid(x)
        for layer in self.layers[1:-1]:
            x = torch.sigmoid(layer(x))
        return x  # (B, d)

    def _activation(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def forward(self, batch: UserBatch, **schedule) -> Output:
        out = self._reconstruct(batch)
        scale = 1.0 / self.cfg.max_rating
        if not batch.sparse:
            return Output(F.mse_loss(out.float(), batch.rows * scale), out)
        row_of = batch.row_of_nonzeros()
        target = batch.values * scale
        squared = (out.float() ** 2).sum() - 2 * (out[row_of, batch.indices].float() * target).sum() \
            + (target ** 2).sum()
        return Output(squared / out.numel(), out)

    def score(self, users, history, items=None):
        return gather_candidates(self._reconstruct(UserBatch(users, history)), items)

    def _output_layer(self):
        return self.layers[-1]

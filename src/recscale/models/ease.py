"""EASE (Steck 2019): a closed-form item-item model, B = argmin ||X - XB||^2 + lambda ||B||^2 with
diag(B) = 0, solved as P = (X^T X + lambda I)^-1, B = -P / diag(P), diag(B) = 0. Scores are x_u B."""

from __future__ import annotations

import dataclasses
import warnings

import torch

from recscale.config.fields import Checked, option, positive
from recscale.errors import RecscaleError
from recscale.models.base import DataShape, Output, Recommender, Retrieval, gather_candidates

MAX_EASE_RETRIEVAL_ITEMS = 20_000  # item vectors of dimension I: I^2 floats in the index


@dataclasses.dataclass(frozen=True)
class EASEConfig(Checked):
    lam: float = option(250.0, "L2 weight lambda (the diagonal added to X^T X)", check=positive)


class EASE(Recommender):
    Config = EASEConfig
    closed_form = True
    needs_history = True
    tune_space = {"lam": {"type": "log", "low": 1.0, "high": 10_000.0}}

    def __init__(self, shape: DataShape, cfg: EASEConfig | None = None):
        super().__init__()
        self.cfg = cfg if cfg is not None else self.Config()
        self.register_buffer("weights", torch.zeros(shape.n_items, shape.n_items))

    def fit(self, user_items: torch.Tensor) -> None:
        x = user_items.to(torch.float64)
        with warnings.catch_warnings():  # sparse x sparse goes through CSR, which torch calls beta
            warnings.simplefilter("ignore", UserWarning)
            gram = torch.sparse.mm(x.t(), x).to_dense()  # (I, I)
        gram.diagonal().add_(self.cfg.lam)
        p = torch.linalg.inv(gram)
        b = -p / torch.diagonal(p)[None, :]
        b.diagonal().zero_()
        self.weights = b.to(self.weights.dtype)

    def forward(self, batch, **schedule) -> Output:
        raise RecscaleError("EASE is fitted in closed form; it has no training loss")

    def score(self, users, history, items=None):
        return gather_candidates(history @ self.weights, items)

    def catalog_scorer(self, users, history):
        def block(items: slice | torch.Tensor) -> torch.Tensor:
            return history @ self.weights[:, items]  # (B, b); a sparse CSR history stays sparse
        return block

    def retrieval(self) -> Retrieval | None:
        """x_u B: the history row is the user vector and B's columns the item vectors, of
        dimension I: worth an index only for catalogs of a few tens of thousands of items."""
        if self.weights.shape[0] > MAX_EASE_RETRIEVAL_ITEMS:
            return None
        return Retrieval(_Identity(), self.weights.t().contiguous())


class _Identity(torch.nn.Module):
    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return history

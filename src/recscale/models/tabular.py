"""The embedding MLP of the NVTabular MovieLens example: user and item embeddings plus a mean
EmbeddingBag over the item's genres, concatenated, three Dense(128, ReLU) layers and a sigmoid
output trained with binary cross-entropy on a binarized rating (rating > 3 is a like, as there).
Embedding sizes default to meta.json's suggestion (NVTabular's rule)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from recscale.config.fields import Checked, each, in_range, option
from recscale.config.run import MAX_WIDTH, WIDTH
from recscale.data.loading.batch import TabularBatch, TabularRows
from recscale.models.base import DataShape, Output, Recommender, score_pairs_in_chunks
from recscale.models.foldin import StepFoldIn, item_part, user_vjp
from recscale.models.tables import EmbeddingTables, TableSpec, rename_legacy_keys


@dataclasses.dataclass(frozen=True)
class EmbeddingMLPConfig(Checked):
    layers: tuple[int, ...] = option((128, 128, 128), "Dense(ReLU) widths", check=each(WIDTH))
    user_dim: int = option(0, "user embedding width (0: meta.json's suggestion)", check=in_range(0, MAX_WIDTH, high_inclusive=True))
    item_dim: int = option(0, "item embedding width (0: meta.json's suggestion)", check=in_range(0, MAX_WIDTH, high_inclusive=True))
    genre_dim: int = option(0, "genre embedding width (0: meta.json's suggestion)", check=in_range(0, MAX_WIDTH, high_inclusive=True))
    like_threshold: float = option(3.0, "label = rating > this")


class EmbeddingMLP(StepFoldIn, Recommender):
    """A user absent from training is folded in (foldin.py): its vector is a user-table row fitted
    to its history."""

    Config = EmbeddingMLPConfig
    train_defaults = {"batch_size": 4096, "lr": 1e-3, "epochs": 10, "optimizer": "adam"}
    tune_space = {
        "layers": {"type": "categorical", "choices": [[64, 64], [128, 128, 128], [256, 128, 64]]},
        "lr": {"type": "log", "low": 1e-4, "high": 1e-2},
        "batch_size": {"type": "categorical", "choices": [1024, 4096, 16384]},
    }

    @property
    def batch_kind(self) -> TabularRows:
        return TabularRows(labels=lambda ratings: ratings > self.cfg.like_threshold)

    def __init__(self, shape: DataShape, cfg: EmbeddingMLPConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else self.Config()
        # N(0, 1) as nn.Embedding's default; the genre bag is small and stays data-parallel.
        specs = {"user": TableSpec("users", shape.n_users, cfg.user_dim or shape.user_dim, std=1.0),
                 "item": TableSpec("items", shape.n_items, cfg.item_dim or shape.item_dim, std=1.0)}
        self.tables = EmbeddingTables(specs)
        self._register_load_state_dict_pre_hook(rename_legacy_keys("tables", specs))
        self.n_items = shape.n_items
        width = specs["user"].dim + specs["item"].dim
        self.genres = None
        if shape.n_genres:
            self.genres = nn.EmbeddingBag(shape.n_genres, cfg.genre_dim or shape.genre_dim, mode="mean")
            width += self.genres.embedding_dim
            values, offsets = shape.genre_values, shape.genre_offsets
            self.register_buffer("genre_values", values.clone(), persistent=False)
            self.register_buffer("genre_offsets", offsets.clone(), persistent=False)
        layers: list[nn.Module] = []
        for out in cfg.layers:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def id_axes(self) -> dict[str, tuple[int, ...]]:
        """The user and item tables' rows, and the genre bag's (an extended dataset keeps the
        parent's genre numbers and appends new genres)."""
        return {**self.tables.id_axes("tables"), **({"genres.weight": (0,)} if self.genres is not None else {})}

    def logits(self, users, items, genre_values=None, genre_offsets=None) -> torch.Tensor:
        e = self.tables({"users": users, "items": items})  # one lookup: sharded tables exchange ids once
        return self.mlp(torch.cat([e["user"], self._item_inputs(items, e["item"], genre_values, genre_offsets)],
                                  -1)).squeeze(-1)

    def _item_inputs(self, items, item=None, genre_values=None, genre_offsets=None) -> torch.Tensor:
        """(..., W - user width) the item's part of the MLP's input: [item; its genre bag]. Without
        the batch's bags (scoring), every item's bag is taken once and gathered: the same values,
        and a graph that export can trace (no data-dependent sizes)."""
        item = self.tables["item"].weight[items] if item is None else item  # (..., d)
        if self.genres is None:
            return item
        if genre_values is None:
            return torch.cat([item, self.genres(self.genre_values, self.genre_offsets)[items]], -1)  # (..., d + G)
        return torch.cat([item, self.genres(genre_values, genre_offsets)], -1)

    # ------------------------------------------------------------ user vectors (fold-in, foldin.py)

    def user_vector(self, users: torch.Tensor | None) -> torch.Tensor:
        weight = self.tables["user"].weight
        return weight if users is None else weight[users]  # (..., D)

    def vector_logits(self, vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(N,) logits of user vectors (N, D) with items (N,)."""
        return self.mlp(torch.cat([vectors, self._item_inputs(items)], -1)).squeeze(-1)

    def fold_in_candidates(self, items: torch.Tensor) -> torch.Tensor:
        """(B, C, L1) the first layer's part from the items (B, C) and their genres, computed once."""
        return item_part(self.mlp, self._item_inputs(items), self.tables.specs["user"].dim)

    def fold_in_logits(self, vectors: torch.Tensor, candidates: torch.Tensor):
        """(logits (B, C), backward), the MLP's backward pass written out (foldin.py)."""
        return user_vjp(self.mlp, vectors, candidates, vectors.new_ones(1))

    def vector_catalog_scores(self, vectors: torch.Tensor, items: slice | torch.Tensor) -> torch.Tensor:
        """(B, b) scores of users given as vectors (B, D) for `items` (a slice or ids)."""
        if isinstance(items, slice):
            items = torch.arange(self.n_items, device=vectors.device)[items]
        items = items.expand(vectors.shape[0], -1)  # (B, b)

        def pairs(u, i):  # row indices into `vectors` and item ids, (b, C) each
            return self.vector_logits(vectors[u.reshape(-1)], i.reshape(-1)).reshape(i.shape)
        return score_pairs_in_chunks(pairs, torch.arange(vectors.shape[0], device=vectors.device), items, self.n_items)

    def forward(self, batch: TabularBatch, **schedule) -> Output:
        logits = self.logits(batch.users, batch.items, batch.genre_values, batch.genre_offsets)
        return Output(F.binary_cross_entropy_with_logits(logits.float(), batch.labels), logits)

    def scoring_module(self) -> nn.Module:
        """For export the genre bag of every item is computed once (it depends on the item only)."""
        return _TabularPairs(self)

    @property
    def scoring_kind(self) -> str:
        return "pairs"

    def score(self, users, history, items=None):
        def pairs(u, i):  # (b, C) -> (b, C), through the flat batch the EmbeddingBag wants
            return self.logits(u.reshape(-1), i.reshape(-1)).reshape(i.shape)
        return score_pairs_in_chunks(pairs, users, items, self.n_items)


class _TabularPairs(nn.Module):
    def __init__(self, model: EmbeddingMLP):
        super().__init__()
        self.model = model
        if model.genres is not None:
            with torch.no_grad():
                self.register_buffer("genre_vectors", model.genres(model.genre_values, model.genre_offsets))

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        e = self.model.tables({"users": users, "items": items})
        parts = [e["user"], e["item"]]
        if self.model.genres is not None:
            parts.append(self.genre_vectors[items])
        return self.model.mlp(torch.cat(parts, -1)).squeeze(-1)

"""Typed batches, and the batch kinds a model declares it eats (`Recommender.batch_kind`): the
loading factory (factory.py) builds the loader of a kind. Every batch field is a tensor (or None);
`.to()` and `.pin_memory()` move them all."""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch


class _TensorBatch:
    def _map(self, fn):
        return dataclasses.replace(self, **{f.name: (None if (v := getattr(self, f.name)) is None else fn(v))
                                            for f in dataclasses.fields(self)})

    def to(self, device: torch.device | str, non_blocking: bool = False):
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self):
        return self._map(lambda t: t.pin_memory())

    def __len__(self) -> int:
        return int(getattr(self, dataclasses.fields(self)[0].name).shape[0])


@dataclasses.dataclass(frozen=True)
class PairBatch(_TensorBatch):
    """(user, item) pairs with 1/0 labels: NCF training and sampled evaluation."""

    users: torch.Tensor   # (B,) int64
    items: torch.Tensor   # (B,) int64
    labels: torch.Tensor  # (B,) float32


@dataclasses.dataclass(frozen=True)
class UserBatch(_TensorBatch):
    """Rows of the user-item matrix for the batch's users: Mult-VAE, Mult-DAE, autoencoder.

    Either dense (`rows`) or sparse, as the CSR slice of the batch (`indices`, `offsets`, `values`:
    the nonzeros of every row in order, each row's start, their values); the model asks for one."""

    users: torch.Tensor                  # (B,) int64
    rows: torch.Tensor | None = None     # (B, I) float32
    indices: torch.Tensor | None = None  # (nnz,) int64 item of each nonzero
    offsets: torch.Tensor | None = None  # (B,) int64 start of each row's nonzeros
    values: torch.Tensor | None = None   # (nnz,) float32

    @property
    def sparse(self) -> bool:
        return self.rows is None

    def row_of_nonzeros(self) -> torch.Tensor:
        """(nnz,) the batch row of each nonzero."""
        lengths = torch.diff(self.offsets, append=self.offsets.new_tensor([self.indices.numel()]))
        return torch.repeat_interleave(torch.arange(self.users.numel(), device=self.users.device), lengths,
                                       output_size=self.indices.numel())


@dataclasses.dataclass(frozen=True)
class TabularBatch(_TensorBatch):
    """User, item, multi-hot genres as (values, offsets) for nn.EmbeddingBag, and a label."""

    users: torch.Tensor          # (B,) int64
    items: torch.Tensor          # (B,) int64
    genre_values: torch.Tensor   # (nnz,) int64
    genre_offsets: torch.Tensor  # (B,) int64
    labels: torch.Tensor         # (B,) float32


PAD = -1  # the item id of padding in a SequenceBatch (never an item)


@dataclasses.dataclass(frozen=True)
class SequenceBatch(_TensorBatch):
    """Next-item training: each user's last `max_len` training items as inputs, right-aligned (the
    most recent in the last column) and padded on the left with PAD, and at each position the item
    that followed (PAD where there is none to predict)."""

    users: torch.Tensor    # (B,) int64
    inputs: torch.Tensor   # (B, L) int64, oldest first
    targets: torch.Tensor  # (B, L) int64


def multi_hot_batch(values: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                    items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (values, offsets) pair for nn.EmbeddingBag of the given items' multi-hot features."""
    counts = lengths[items]
    batch_offsets = torch.cumsum(counts, 0) - counts
    starts = torch.repeat_interleave(offsets[items], counts)
    within = torch.arange(int(counts.sum())) - torch.repeat_interleave(batch_offsets, counts)
    return values[starts + within], batch_offsets


# ----------------------------------------------------------------------------- batch kinds


@dataclasses.dataclass(frozen=True)
class Pairs:
    """PairBatch: the training split's positives, each with `--negatives` sampled negatives."""


@dataclasses.dataclass(frozen=True)
class UserRows:
    """UserBatch: training users' rows of the user-item matrix, 1/0 (`binary`) or the ratings;
    `sparse`: as sparse tensors."""

    binary: bool = True
    sparse: bool = False


@dataclasses.dataclass(frozen=True)
class TabularRows:
    """TabularBatch: (user, item, genres) rows of the training split; `labels` turns a (B,) tensor of
    ratings into targets."""

    labels: Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Sequences:
    """SequenceBatch: per training user, the last `max_len` items of its time-ordered training
    sequence and their successors."""

    max_len: int = 50


BatchKind = Pairs | UserRows | TabularRows | Sequences

"""Typed batches. Every field is a tensor (or None); `.to()` and `.pin_memory()` move them all."""

from __future__ import annotations

import dataclasses

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
    """Rows of the user-item matrix, dense only for the batch: Mult-VAE, Mult-DAE, autoencoder."""

    users: torch.Tensor  # (B,) int64
    rows: torch.Tensor   # (B, I) float32


@dataclasses.dataclass(frozen=True)
class TabularBatch(_TensorBatch):
    """User, item, multi-hot genres as (values, offsets) for nn.EmbeddingBag, and a label."""

    users: torch.Tensor          # (B,) int64
    items: torch.Tensor          # (B,) int64
    genre_values: torch.Tensor   # (nnz,) int64
    genre_offsets: torch.Tensor  # (B,) int64
    labels: torch.Tensor         # (B,) float32


def multi_hot_batch(values: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor,
                    items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The (values, offsets) pair for nn.EmbeddingBag of the given items' multi-hot features."""
    counts = lengths[items]
    batch_offsets = torch.cumsum(counts, 0) - counts
    starts = torch.repeat_interleave(offsets[items], counts)
    within = torch.arange(int(counts.sum())) - torch.repeat_interleave(batch_offsets, counts)
    return values[starts + within], batch_offsets

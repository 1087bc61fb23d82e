"""What every training loader shares: one seeded generator per (epoch, rank), the per-rank shard of an
epoch's permutation, and the epoch loop of whole batches.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch


def epoch_generator(seed: int, epoch: int, rank: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator whose stream depends on (seed, epoch, rank) only, well mixed by SeedSequence.
    On a GPU the stream differs from the CPU's, but is as reproducible."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2, dtype=np.uint32)
    return torch.Generator(device=device).manual_seed(int(state[0]) << 31 | int(state[1] >> 1))


def shard_bounds(n: int, world_size: int, drop_last: bool) -> int:
    """Examples per rank under the padding/dropping policy."""
    return n // world_size if drop_last else math.ceil(n / world_size)


def shard_permutation(n: int, seed: int, epoch: int, rank: int, world_size: int, drop_last: bool,
                      shuffle: bool = True) -> torch.Tensor:
    """This rank's indices for the epoch: one permutation shared by all ranks, cut in equal parts."""
    order = torch.randperm(n, generator=epoch_generator(seed, epoch)) if shuffle else torch.arange(n)
    per_rank = shard_bounds(n, world_size, drop_last)
    if per_rank * world_size > n:  # pad by wrapping around
        order = torch.cat([order, order[: per_rank * world_size - n]])
    return order[rank * per_rank:(rank + 1) * per_rank]


def n_batches(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else math.ceil(n / batch_size)


class EpochLoader:
    """Shared mechanics: epoch counter, rank/world, batch count from the per-rank example count."""

    dropped_users = 0  # users whose examples the loader had to leave out (PairLoader says why)

    def __init__(self, n_examples: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool,
                 rank: int, world_size: int):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of size {world_size}")
        self.n_examples, self.batch_size, self.seed = n_examples, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch, self.start_batch = 0, 0
        self.device = torch.device("cpu")  # where batches are built; loaders that build on a GPU say so

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def per_rank(self) -> int:
        return shard_bounds(self.n_examples, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return n_batches(self.per_rank, self.batch_size, self.drop_last)

    def _indices(self) -> torch.Tensor:
        return shard_permutation(self.n_examples, self.seed, self.epoch, self.rank, self.world_size,
                                 self.drop_last, self.shuffle)

    def _slices(self) -> Iterator[slice]:
        for b in range(self.start_batch, len(self)):
            yield slice(b * self.batch_size, (b + 1) * self.batch_size)

"""The training loader a model asks for (models/base.py: `training_loader`), built from a prepared
dataset: the split in memory (data/loading/memory.py) or streamed from its CSR files (data/loading/stream.py)
when `LoaderOptions.window` is set. Both give the same batches when one window holds the split.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from recscale.data.loading.memory import PairLoader, TabularLoader, UserRowLoader
from recscale.data.loading.stream import StreamPairLoader, StreamRowLoader, StreamTabularLoader
from recscale.errors import RecscaleError


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
    """What every training loader takes besides the data; `batch_size` is this process's share."""

    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device | str = "cpu"
    negatives: int = 4
    window: int | None = None  # streaming: positives per shuffle window (None: the split in memory)


def pair_loader(data, options: LoaderOptions) -> PairLoader:
    """Positives of the training split with sampled negatives (NCF models)."""
    if options.negatives >= data.n_items:
        raise RecscaleError(f"--negatives: {options.negatives} is not below the {data.n_items} items of {data.root}")
    if options.window is not None:
        return StreamPairLoader(data.csr("train"), options.batch_size, options.window, options.negatives,
                                options.seed, options.rank, options.world_size)
    users, items = data.columns("train", "user", "item")
    return PairLoader(users, items, data.n_items, options.batch_size, negatives=options.negatives,
                      seed=options.seed, rank=options.rank, world_size=options.world_size, device=options.device)


def row_loader(data, options: LoaderOptions, binary: bool = True, sparse: bool = False) -> UserRowLoader:
    """Training users' rows of the user-item matrix: 1/0 (`binary`) or the ratings."""
    if options.window is not None:
        return StreamRowLoader(data.csr("train"), data.training_users(), options.batch_size, binary, sparse,
                               options.seed, options.rank, options.world_size)
    return UserRowLoader(data.user_items("train", binary=binary), data.training_users(), options.batch_size,
                         seed=options.seed, rank=options.rank, world_size=options.world_size,
                         device=options.device, sparse=sparse)


def tabular_loader(data, options: LoaderOptions, labels: Callable[[torch.Tensor], torch.Tensor]) -> TabularLoader:
    """(user, item, genres) rows of the training split; `labels` turns ratings into targets."""
    genres = data.item_genres()
    if genres is None:
        genres = (torch.zeros(0, dtype=torch.int64), torch.zeros(data.n_items, dtype=torch.int64))
    if options.window is not None:
        return StreamTabularLoader(data.csr("train"), labels, *genres, options.batch_size, options.window,
                                   options.seed, options.rank, options.world_size)
    users, items, ratings = data.columns("train", "user", "item", "rating")
    return TabularLoader(users, items, labels(ratings).float(), *genres, options.batch_size, seed=options.seed,
                         rank=options.rank, world_size=options.world_size)

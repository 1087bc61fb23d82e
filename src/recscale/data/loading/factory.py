"""The one owner of how training batches are read: `decide_loading` chooses memory or stream
(recorded in config.toml, so a resumed run reads as the first did), `open_training_data` opens the
dataset that way, and `training_loader` builds the loader of a model's batch kind (batch.py) for
one process: the split in memory (memory.py) or streamed from its CSR files in shuffle windows that
fit the budget (stream.py). Both give the same batches when one window holds the split."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from recscale.config.run import LoaderConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.loading.batch import BatchKind, Pairs, Sequences, TabularRows, UserRows
from recscale.data.loading.memory import PairLoader, TabularLoader, UserRowLoader
from recscale.data.loading.sequences import SequenceLoader
from recscale.data.loading.stream import (
    StreamPairLoader,
    StreamRowLoader,
    StreamTabularLoader,
    in_memory_bytes,
    window_positives,
)
from recscale.errors import RecscaleError
from recscale.resources import memory_budget


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


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Examples (or users) per step and process: `--batch-size` is the global batch."""
    return max(1, global_batch // world_size)


def decide_loading(loader: LoaderConfig, data: PreparedDataset) -> LoaderConfig:
    """`--data-loading auto` and `--memory-budget auto` made concrete: stream when the in-memory
    loaders would take more than the budget (and the dataset has the per-user index streaming reads)."""
    budget = memory_budget(loader.memory_budget)
    mode = loader.data_loading
    if mode == "auto":
        need = in_memory_bytes(data.meta["counts"]["train"], loader.negatives)
        mode = "stream" if data.has_index and need > budget else "memory"
    if mode == "stream" and not data.has_index:
        raise RecscaleError(f"--data-loading stream: {data.root} was prepared without the per-user index "
                            f"that streaming reads; prepare it again with this recscale")
    return dataclasses.replace(loader, data_loading=mode, memory_budget=str(budget))


def open_training_data(path: str | Path, loader: LoaderConfig) -> PreparedDataset:
    """The run's dataset, read as `decide_loading` chose: rows from the CSR files as asked when
    streaming, whole splits in memory otherwise."""
    return PreparedDataset(path, streaming=loader.data_loading == "stream")


def training_loader(kind: BatchKind, data: PreparedDataset, loader: LoaderConfig, seed: int = 0, rank: int = 0,
                    world_size: int = 1, device: torch.device | str = "cpu"):
    """The loader of `kind`'s batches for process `rank` of `world_size` (`loader` as decided)."""
    window = (window_positives(memory_budget(loader.memory_budget), loader.negatives)
              if loader.data_loading == "stream" else None)
    options = LoaderOptions(batch_size=local_batch_size(loader.batch_size, world_size), seed=seed, rank=rank,
                            world_size=world_size, device=device, negatives=loader.negatives, window=window)
    if isinstance(kind, Pairs):
        return pair_loader(data, options)
    if isinstance(kind, UserRows):
        return row_loader(data, options, kind.binary, kind.sparse)
    if isinstance(kind, TabularRows):
        return tabular_loader(data, options, kind.labels)
    if isinstance(kind, Sequences):
        return sequence_loader(data, options, kind.max_len)
    raise RecscaleError(f"no training batches of kind {kind!r}")


def pair_loader(data: PreparedDataset, options: LoaderOptions) -> PairLoader:
    """Positives of the training split with sampled negatives (NCF models)."""
    if options.negatives >= data.n_items:
        raise RecscaleError(f"--negatives: {options.negatives} is not below the {data.n_items} items of {data.root}")
    if options.window is not None:
        return StreamPairLoader(data.csr("train"), options.batch_size, options.window, options.negatives,
                                options.seed, options.rank, options.world_size)
    users, items = data.columns("train", "user", "item")
    return PairLoader(users, items, data.n_items, options.batch_size, negatives=options.negatives,
                      seed=options.seed, rank=options.rank, world_size=options.world_size, device=options.device)


def row_loader(data: PreparedDataset, options: LoaderOptions, binary: bool = True,
               sparse: bool = False) -> UserRowLoader:
    """Training users' rows of the user-item matrix: 1/0 (`binary`) or the ratings."""
    if options.window is not None:
        return StreamRowLoader(data.csr("train"), data.training_users(), options.batch_size, binary, sparse,
                               options.seed, options.rank, options.world_size)
    return UserRowLoader(data.user_items("train", binary=binary), data.training_users(), options.batch_size,
                         seed=options.seed, rank=options.rank, world_size=options.world_size,
                         device=options.device, sparse=sparse)


def tabular_loader(data: PreparedDataset, options: LoaderOptions, labels) -> TabularLoader:
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


def sequence_loader(data: PreparedDataset, options: LoaderOptions, max_len: int) -> SequenceLoader:
    """Each training user's last `max_len` items and their successors (sequential models). The
    sequences take 4 bytes an interaction and are read in memory; streaming them is not there yet."""
    if options.window is not None:
        raise RecscaleError("--data-loading stream: sequence batches are read in memory (4 bytes an interaction); "
                            "use --data-loading memory")
    indptr, items = data.sequences("train")
    return SequenceLoader(indptr, items, options.batch_size, max_len, seed=options.seed, rank=options.rank,
                          world_size=options.world_size, device=options.device)

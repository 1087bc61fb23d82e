"""Batch-level loaders: whole batches cut from tensors, never per-example `__getitem__`.

Every loader is an iterable of typed batches with `len()` = batches per epoch and
`set_epoch(e, start_batch=0)`. Randomness comes from a torch.Generator seeded by (seed, epoch[, rank])
so that an epoch is reproducible on its own: resuming mid-epoch regenerates the same epoch and
starts at `start_batch`, with no loader state to save.

Sharding (data parallelism): all ranks draw the same epoch permutation and rank r takes the r-th
contiguous part. Every rank yields the same number of batches, so DDP never hangs on an uneven
tail. Policy: with `drop_last=False` the permutation is padded by wrapping around to a multiple of
the world size (at most world_size - 1 examples are seen twice per epoch, as DistributedSampler
does) and the last, shorter batch is kept; with `drop_last=True` the tail that does not fill a whole
batch on every rank is dropped (each example at most once per epoch).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from recscale.data.loading.batch import PairBatch, TabularBatch, UserBatch, multi_hot_batch
from recscale.data.loading.epochs import EpochLoader, epoch_generator, shard_bounds, shard_permutation
from recscale.data.loading.sampling import NegativeSampler


class TensorLoader(EpochLoader):
    """Batches of equally long column tensors: per epoch one gather into shuffled order, then each
    batch is a zero-copy slice. `make_batch(**columns)` builds the typed batch."""

    def __init__(self, columns: dict[str, torch.Tensor], make_batch: Callable, batch_size: int, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = False, rank: int = 0, world_size: int = 1):
        lengths = {t.shape[0] for t in columns.values()}
        if len(lengths) != 1:
            raise ValueError(f"columns differ in length: {lengths}")
        super().__init__(lengths.pop(), batch_size, seed, shuffle, drop_last, rank, world_size)
        self.columns, self.make_batch = columns, make_batch

    def __iter__(self):
        index = self._indices()
        epoch = {name: t[index] for name, t in self.columns.items()}
        for s in self._slices():
            yield self.make_batch(**{name: t[s] for name, t in epoch.items()})


class PairLoader(EpochLoader):
    """NCF training: each epoch, this rank's share of the positives plus `negatives` uniformly
    sampled non-positive items per positive (label 0), shuffled together and cut into batches.

    The batch size counts positives and negatives alike (as NVIDIA's NCF does). With a CUDA `device`
    the positives live on the GPU and negatives are drawn there: no host work or copies per epoch.

    A user who has interacted with every item has no negative to contrast its positives with; its
    positives are left out of training (`dropped_users` counts them), so that every epoch has the
    same fixed size on every rank."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor, n_items: int, batch_size: int,
                 negatives: int = 4, seed: int = 0, drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu"):
        device = torch.device(device)
        users, items = users.to(device, torch.int64), items.to(device, torch.int64)
        n_users = int(users.max()) + 1 if users.numel() else 0
        sampler = NegativeSampler(users, items, n_users, n_items)
        full = sampler.free <= 0
        self.dropped_users = int(full.sum())
        if self.dropped_users:
            keep = ~full[users]
            users, items = users[keep], items[keep]
        super().__init__(users.numel(), batch_size, seed, True, drop_last, rank, world_size)
        self.device, self.users, self.items, self.sampler = device, users, items, sampler
        self.n_items, self.negatives = n_items, negatives

    @property
    def per_rank(self) -> int:
        return shard_bounds(self.n_examples, self.world_size, self.drop_last) * (1 + self.negatives)

    def epoch_tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(users, items, labels) of this rank's epoch, shuffled."""
        shard = shard_permutation(self.n_examples, self.seed, self.epoch, self.rank, self.world_size,
                                  self.drop_last).to(self.device)
        gen = epoch_generator(self.seed, self.epoch, 1 + self.rank, self.device)
        pos_users, pos_items = self.users[shard], self.items[shard]
        neg_users = pos_users.repeat(self.negatives)
        neg_items = self.sampler.sample(neg_users, gen)
        users = torch.cat([pos_users, neg_users])
        items = torch.cat([pos_items, neg_items])
        labels = torch.cat([torch.ones(pos_users.numel(), device=self.device),
                            torch.zeros(neg_users.numel(), device=self.device)])
        order = torch.randperm(users.numel(), generator=gen, device=self.device)
        return users[order], items[order], labels[order]

    def __iter__(self):
        users, items, labels = self.epoch_tensors()
        for s in self._slices():
            yield PairBatch(users[s], items[s], labels[s])


def csr_rows_dense(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor, rows: torch.Tensor,
                   n_cols: int) -> torch.Tensor:
    """Dense (len(rows), n_cols) float rows of a CSR matrix, built without a Python loop."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())  # one sync per batch on a GPU; output_size below then needs none
    device = indptr.device
    out = torch.zeros((rows.numel(), n_cols), dtype=values.dtype, device=device)
    if total == 0:
        return out
    row_of = torch.repeat_interleave(torch.arange(rows.numel(), device=device), lengths, output_size=total)
    # position of each nonzero inside the CSR arrays: start of its row + its offset within the row
    offsets = torch.arange(total, device=device) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths,
                                                                           lengths, output_size=total)
    pos = torch.repeat_interleave(starts, lengths, output_size=total) + offsets
    out[row_of, indices[pos]] = values[pos]
    return out


class UserRowLoader(EpochLoader):
    """Mult-VAE / Mult-DAE / autoencoder training: shuffled users, each batch the rows of the CSR
    user-item matrix for those users only: dense (never the whole matrix densified) or, with
    `sparse=True`, the CSR slice itself (its cost follows the interactions, not the catalog). With a
    CUDA `device` the CSR arrays live on the GPU and batches are made there."""

    def __init__(self, matrix, users: torch.Tensor, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu",
                 sparse: bool = False):
        super().__init__(users.numel(), batch_size, seed, shuffle, drop_last, rank, world_size)
        self.device, self.sparse = torch.device(device), sparse
        self.indptr = torch.from_numpy(matrix.indptr.astype(np.int64)).to(self.device)
        self.indices = torch.from_numpy(matrix.indices.astype(np.int64)).to(self.device)
        self.values = torch.from_numpy(matrix.data.astype(np.float32)).to(self.device)
        self.n_items = matrix.shape[1]
        self.users = users.to(self.device, torch.int64)

    def __iter__(self):
        users = self.users[self._indices().to(self.device)]
        for s in self._slices():
            u = users[s]
            if self.sparse:
                yield UserBatch(u, None, *csr_rows_sparse(self.indptr, self.indices, self.values, u))
            else:
                yield UserBatch(u, csr_rows_dense(self.indptr, self.indices, self.values, u, self.n_items))


def csr_rows_sparse(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                    rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The CSR slice (indices, offsets, values) of the given rows, in their order."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    total = int(lengths.sum())
    offsets = torch.cumsum(lengths, 0) - lengths
    pos = torch.repeat_interleave(starts - offsets, lengths, output_size=total) + torch.arange(total, device=rows.device)
    return indices[pos], offsets, values[pos]


class TabularLoader(TensorLoader):
    """Embedding-MLP batches: (user, item, label) rows plus each item's multi-hot genres."""

    def __init__(self, users, items, labels, genre_values, genre_offsets, batch_size: int, **kwargs):
        lengths = torch.diff(genre_offsets, append=torch.tensor([genre_values.numel()]))
        self.genres = (genre_values, genre_offsets, lengths)

        def make(users, items, labels):
            values, offsets = multi_hot_batch(*self.genres, items)
            return TabularBatch(users, items, values, offsets, labels)

        super().__init__({"users": users.to(torch.int64), "items": items.to(torch.int64),
                          "labels": labels.to(torch.float32)}, make, batch_size, **kwargs)

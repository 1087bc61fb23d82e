"""Training loaders that read the training split from its CSR files (data/dataset/csr.py) as they go, for
`--data-loading stream`: memory follows the shuffle window, not the data.

Pairs and tabular rows. An epoch's order of a rank is a function of (seed, epoch, rank) only:
1. The interactions (in the CSR files' (user, item) order) are cut into blocks of `block`
   positions; one permutation of the blocks, shared by all ranks, gives the epoch's sequence, which
   is padded by wrapping around to a multiple of the world size and cut into equal contiguous
   shares (the in-memory loaders' policy: every rank yields the same number of batches).
2. A rank walks its share a window of `window` positives at a time: it reads them (a few runs of
   the items file), samples their negatives exactly (NegativeSampler over the rows of just the
   window's users, read from the same files: no global set of positive keys in memory), shuffles
   the window and cuts batches; a partial batch carries into the next window.
When one window holds the whole share, the blocks are single interactions: the sequence is then
one global permutation, exactly the in-memory PairLoader's/TabularLoader's, and the batches are
identical to theirs (tests/data/test_streaming.py). A smaller window shuffles less globally (as
Merlin's and NVTabular's loaders do); each window draws from its own generator, so resuming
mid-epoch starts at the window of the batch, with nothing to replay.

User rows (Mult-VAE/DAE, autoencoder): the in-memory loader's user order, each batch's rows read
from the CSR files: identical batches in both modes.

Memory (`BYTES_PER_EXAMPLE`): a window of W positives with n negatives each is given 72 (1 + n) W
bytes of the budget; measured at 20M interactions the loader's peak was 63 (1 + n) W (the window's
ids, labels and shuffle with one gathered copy, the chunked sampler's temporaries, the window
users' rows for the sampler, the last batch copied out of the previous window).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from recscale.data.dataset.csr import CSRFile
from recscale.data.loading.batch import PairBatch, TabularBatch, UserBatch, multi_hot_batch
from recscale.data.loading.epochs import EpochLoader, epoch_generator, shard_bounds
from recscale.data.loading.sampling import NegativeSampler

BYTES_PER_EXAMPLE = 72
BLOCKS_PER_WINDOW = 64  # a window mixes this many blocks from all over the split


def window_positives(budget_bytes: int, negatives: int) -> int:
    """Positives per window that a memory budget allows."""
    return max(1, budget_bytes // (BYTES_PER_EXAMPLE * (1 + negatives)))


def in_memory_bytes(nnz: int, negatives: int) -> int:
    """What the in-memory loaders take for `nnz` training interactions (the whole split is one window)."""
    return nnz * BYTES_PER_EXAMPLE * (1 + negatives) + nnz * 16


class PositionPlan:
    """Which interactions (positions in the CSR files) a rank reads, window by window, in an epoch.
    Users in `excluded` (sorted) are left out, as PairLoader leaves out users with no free item."""

    def __init__(self, indptr: np.ndarray, excluded: np.ndarray, window: int, seed: int, rank: int, world_size: int):
        nnz = int(indptr[-1])
        cut_starts, cut_ends = indptr[excluded], indptr[excluded + 1]
        # the kept positions are segments between the excluded users' rows
        self.phys_starts = np.concatenate([[0], cut_ends]).astype(np.int64)
        lengths = np.concatenate([cut_starts, [nnz]]) - self.phys_starts
        self.log_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.n = int(lengths.sum())
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.per_rank = shard_bounds(self.n, world_size, drop_last=False)
        self.window = max(1, min(window, self.per_rank))
        self.block = 1 if self.window >= self.per_rank else max(1, self.window // BLOCKS_PER_WINDOW)
        self.n_blocks = math.ceil(self.n / self.block)
        self.n_windows = math.ceil(self.per_rank / self.window) if self.per_rank else 0

    def epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(block order, each block's size, where each block ends in the epoch's sequence)."""
        order = torch.randperm(self.n_blocks, generator=epoch_generator(self.seed, epoch)).numpy()
        sizes = np.full(self.n_blocks, self.block, dtype=np.int64)
        if self.n_blocks:
            sizes[-1] = self.n - self.block * (self.n_blocks - 1)
        return order, sizes, np.cumsum(sizes[order])

    def positions(self, plan, w: int) -> np.ndarray:
        """Positions (in the CSR files) of this rank's window `w`, in sequence order."""
        order, sizes, ends = plan
        first = self.rank * self.per_rank + w * self.window
        last = min(first + self.window, (self.rank + 1) * self.per_rank)
        s = np.arange(first, last, dtype=np.int64) % self.n  # wrap-around padding
        k = np.searchsorted(ends, s, side="right")
        block = order[k]
        logical = block * self.block + s - (ends[k] - sizes[block])
        segment = np.searchsorted(self.log_starts, logical, side="right") - 1
        return logical - self.log_starts[segment] + self.phys_starts[segment]

    def window_generator(self, epoch: int, w: int, device="cpu") -> torch.Generator:
        # window 0 draws as the in-memory loaders draw (stream 1 + rank)
        return epoch_generator(self.seed, epoch, 1 + self.rank + self.world_size * w, device)


class _WindowLoader(EpochLoader):
    """Batches cut from a rank's windows in order, a partial batch carried into the next window."""

    def __init__(self, plan: PositionPlan, batch_size: int, per_positive: int, seed: int, rank: int, world_size: int):
        super().__init__(plan.n, batch_size, seed, True, False, rank, world_size)
        self.plan, self.per_positive = plan, per_positive

    @property
    def per_rank(self) -> int:
        return self.plan.per_rank * self.per_positive

    def _window(self, positions: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _make(self, columns: dict[str, torch.Tensor]):
        raise NotImplementedError

    def __iter__(self):
        plan = self.plan.epoch(self.epoch)
        per_window = self.plan.window * self.per_positive
        skip = self.start_batch * self.batch_size  # examples before the first batch to yield
        remaining = len(self) - self.start_batch
        carry: dict[str, torch.Tensor] | None = None
        for w in range(skip // per_window if per_window else 0, self.plan.n_windows):
            if remaining <= 0:
                return
            columns = self._window(self.plan.positions(plan, w), self.plan.window_generator(self.epoch, w))
            if w == skip // per_window:
                columns = {k: v[skip - w * per_window:] for k, v in columns.items()}
            if carry is not None:
                columns = {k: torch.cat([carry[k], v]) for k, v in columns.items()}
            n = next(iter(columns.values())).numel()
            full = n // self.batch_size
            last = min(full, remaining) - 1
            for b in range(last + 1):
                s = slice(b * self.batch_size, (b + 1) * self.batch_size)
                # the consumer still holds the last batch while the next window is built: a copy, so
                # that it does not keep this whole window alive
                yield self._make({k: v[s].clone() if b == last else v[s] for k, v in columns.items()})
            remaining -= full
            # a copy: a view would keep this whole window alive while the next one is built
            carry = {k: v[full * self.batch_size:].clone() for k, v in columns.items()}
            del columns
        if remaining > 0 and carry is not None and next(iter(carry.values())).numel():
            yield self._make(carry)


class StreamPairLoader(_WindowLoader):
    """NCF training pairs from the CSR files: each positive with `negatives` sampled non-positive items."""

    def __init__(self, csr: CSRFile, batch_size: int, window: int, negatives: int = 4, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        lengths = np.diff(csr.indptr)
        full = np.flatnonzero(lengths >= csr.n_items)
        self.dropped_users = int(full.size)
        plan = PositionPlan(csr.indptr, full, window, seed, rank, world_size)
        super().__init__(plan, batch_size, 1 + negatives, seed, rank, world_size)
        self.csr, self.negatives = csr, negatives

    def _window(self, positions: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        csr = self.csr
        pos_users = torch.from_numpy(np.searchsorted(csr.indptr, positions, side="right") - 1)
        pos_items = torch.from_numpy(csr.gather(positions).astype(np.int64))
        # exact negatives from the rows of this window's users only
        window_users = np.unique(pos_users.numpy())
        owner, items = csr.ranges(window_users)
        sampler = NegativeSampler(torch.from_numpy(owner), torch.from_numpy(items.astype(np.int64)),
                                  window_users.size, csr.n_items)
        neg_users = pos_users.repeat(self.negatives)
        local = torch.from_numpy(np.searchsorted(window_users, pos_users.numpy())).repeat(self.negatives)
        neg_items = sampler.sample(local, generator)
        del sampler, owner, items, local
        n_pos, n_neg = pos_users.numel(), neg_users.numel()
        users = torch.cat([pos_users, neg_users])
        del pos_users, neg_users  # each column is gathered into the shuffled order and its input freed
        items = torch.cat([pos_items, neg_items])
        del pos_items, neg_items
        order = torch.randperm(n_pos + n_neg, generator=generator)
        users = users[order]
        items = items[order]
        labels = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])[order]
        return {"users": users, "items": items, "labels": labels}

    def _make(self, columns):
        return PairBatch(columns["users"], columns["items"], columns["labels"])


class StreamTabularLoader(_WindowLoader):
    """Embedding-MLP rows (user, item, label from the rating, the item's multi-hot genres)."""

    def __init__(self, csr: CSRFile, labels: Callable[[torch.Tensor], torch.Tensor], genre_values, genre_offsets,
                 batch_size: int, window: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        plan = PositionPlan(csr.indptr, np.zeros(0, dtype=np.int64), window, seed, rank, world_size)
        super().__init__(plan, batch_size, 1, seed, rank, world_size)
        lengths = torch.diff(genre_offsets, append=torch.tensor([genre_values.numel()]))
        self.csr, self.labels, self.genres = csr, labels, (genre_values, genre_offsets, lengths)

    def _window(self, positions: np.ndarray, generator: torch.Generator) -> dict[str, torch.Tensor]:
        users = torch.from_numpy(np.searchsorted(self.csr.indptr, positions, side="right") - 1)
        items = torch.from_numpy(self.csr.gather(positions).astype(np.int64))
        ratings = torch.from_numpy(self.csr.gather(positions, "ratings"))
        columns = {"users": users, "items": items, "labels": self.labels(ratings).float()}
        if self.plan.block > 1:  # blocks are runs of one user's rows: mix them within the window
            order = torch.randperm(users.numel(), generator=generator)
            columns = {k: v[order] for k, v in columns.items()}
        return columns

    def _make(self, columns):
        values, offsets = multi_hot_batch(*self.genres, columns["items"])
        return TabularBatch(columns["users"], columns["items"], values, offsets, columns["labels"])


class StreamRowLoader(EpochLoader):
    """Mult-VAE / Mult-DAE / autoencoder training: the in-memory UserRowLoader's users and batches,
    each batch's rows read from the CSR files."""

    def __init__(self, csr: CSRFile, users: torch.Tensor, batch_size: int, binary: bool = True, sparse: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(users.numel(), batch_size, seed, True, False, rank, world_size)
        self.csr, self.users, self.binary, self.sparse = csr, users.to(torch.int64), binary, sparse

    def __iter__(self):
        users = self.users[self._indices()]
        for s in self._slices():
            u = users[s]
            indptr, items, ratings = self.csr.rows(u.numpy())
            lengths = torch.from_numpy(np.diff(indptr))
            values = torch.ones(items.size) if self.binary else torch.from_numpy(ratings)
            indices = torch.from_numpy(items.astype(np.int64))
            if self.sparse:
                yield UserBatch(u, None, indices, torch.from_numpy(indptr[:-1].copy()), values)
                continue
            dense = torch.zeros((u.numel(), self.csr.n_items))
            dense[torch.repeat_interleave(torch.arange(u.numel()), lengths), indices] = values
            yield UserBatch(u, dense)

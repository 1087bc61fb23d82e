"""Streaming batches from a Parquet file larger than memory.

Each epoch the row groups are put in a random order (same on every rank) and dealt round-robin to
the ranks. A rank reads `buffer_row_groups` of its row groups at a time, shuffles the rows inside
that buffer, and cuts whole batches; rows left over carry into the next buffer. Peak memory is the
buffer plus one batch, whatever the file's size.

Equal batch counts: row groups differ in size, so every rank yields exactly
min over ranks of floor(rows of that rank / batch_size) batches, computed from the file's metadata.
The rest of each rank's rows (less than a batch, or a rank's surplus over the smallest) is skipped
that epoch; since the row-group order changes per epoch, different rows are skipped each time.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow.parquet as pq
import torch

from recscale.data.loaders import epoch_generator


def _column_tensor(column) -> torch.Tensor:
    array = column.to_numpy()
    # astype copies: arrow's buffers are read-only and torch wants writable memory
    return torch.from_numpy(array.astype(np.int64 if array.dtype.kind in "iu" else np.float32))


class ParquetStreamLoader:
    def __init__(self, path, columns: dict[str, str], make_batch: Callable, batch_size: int,
                 buffer_row_groups: int = 4, seed: int = 0, rank: int = 0, world_size: int = 1):
        """`columns` maps the batch field to the Parquet column, e.g. {"users": "user", ...}."""
        self.path, self.columns, self.make_batch = path, columns, make_batch
        self.batch_size, self.buffer_row_groups, self.seed = batch_size, buffer_row_groups, seed
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        meta = pq.ParquetFile(path).metadata
        self.group_rows = np.array([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        if meta.num_row_groups < world_size:
            raise ValueError(f"{path}: {meta.num_row_groups} row groups cannot feed {world_size} ranks")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _groups(self) -> list[np.ndarray]:
        order = torch.randperm(self.group_rows.size, generator=epoch_generator(self.seed, self.epoch)).numpy()
        return [order[r::self.world_size] for r in range(self.world_size)]

    def __len__(self) -> int:
        return int(min(self.group_rows[g].sum() for g in self._groups()) // self.batch_size)

    def __iter__(self):
        total = len(self)
        mine = self._groups()[self.rank]
        gen = epoch_generator(self.seed, self.epoch, 1 + self.rank)
        reader = pq.ParquetFile(self.path)
        wanted = list(dict.fromkeys(self.columns.values()))
        carry: dict[str, torch.Tensor] | None = None
        done = 0
        for start in range(0, mine.size, self.buffer_row_groups):
            if done == total:
                break
            table = reader.read_row_groups(mine[start:start + self.buffer_row_groups].tolist(), columns=wanted)
            buffer = {name: _column_tensor(table.column(col)) for name, col in self.columns.items()}
            del table
            order = torch.randperm(next(iter(buffer.values())).numel(), generator=gen)
            buffer = {k: v[order] for k, v in buffer.items()}
            if carry is not None:
                buffer = {k: torch.cat([carry[k], v]) for k, v in buffer.items()}
            n = next(iter(buffer.values())).numel()
            full = min(n // self.batch_size, total - done)
            for b in range(full):
                s = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield self.make_batch(**{k: v[s] for k, v in buffer.items()})
            done += full
            carry = {k: v[full * self.batch_size:].clone() for k, v in buffer.items()}

"""Per-user rows of a split on disk: the CSR index that training, evaluation and recommend read
without holding a split in memory.

    NAME.indptr.npy   int64 (U + 1,)  row starts; the rows of user u are [indptr[u], indptr[u + 1])
    NAME.items.npy    int32 (nnz,)    item ids, sorted within each row
    NAME.ratings.npy  float32 (nnz,)  the interactions' ratings

written from a part sorted by (user, item) (every prepared part is), one row group at a time.
`CSRFile` reads them either whole into memory (`memory=True`) or by position on demand: a
position read (`pread`) into a fresh array, so the memory it takes is what the caller holds, not
the size of the file (a memory map would leave every page it touched in the resident set).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import scipy.sparse as sp

SUFFIXES = {"indptr": np.int64, "items": np.int32, "ratings": np.float32}


def csr_paths(root: Path, part: str) -> dict[str, Path]:
    return {name: root / f"{part}.{name}.npy" for name in SUFFIXES}


def write_csr(parquet: Path, out_root: Path, part: str, n_users: int, batch_rows: int = 1 << 20) -> dict[str, str]:
    """The CSR files of a Parquet part sorted by (user, item); returns their names."""
    paths = csr_paths(out_root, part)
    reader = pq.ParquetFile(parquet)
    nnz = reader.metadata.num_rows
    counts = np.zeros(n_users, dtype=np.int64)
    items = np.lib.format.open_memmap(paths["items"], mode="w+", dtype=np.int32, shape=(nnz,))
    ratings = np.lib.format.open_memmap(paths["ratings"], mode="w+", dtype=np.float32, shape=(nnz,))
    at = 0
    for batch in reader.iter_batches(batch_size=batch_rows, columns=["user", "item", "rating"]):
        users = batch.column("user").to_numpy()
        n = users.size
        counts += np.bincount(users, minlength=n_users)
        items[at:at + n] = batch.column("item").to_numpy()
        ratings[at:at + n] = batch.column("rating").to_numpy()
        at += n
    items.flush()
    ratings.flush()
    del items, ratings
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    np.save(paths["indptr"], indptr)
    return {name: path.name for name, path in paths.items()}


def _npy_layout(path: Path) -> tuple[int, np.dtype, tuple]:
    """(offset of the data, dtype, shape) of a .npy file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(handle)
        return handle.tell(), dtype, shape


class _Column:
    """One .npy array, in memory or read by position."""

    def __init__(self, path: Path, memory: bool):
        self.offset, self.dtype, self.shape = _npy_layout(path)
        self.path = path
        self.array = np.load(path) if memory else None
        self.handle = None if memory else open(path, "rb")

    def __len__(self) -> int:
        return self.shape[0]

    def slice(self, start: int, stop: int) -> np.ndarray:
        if self.array is not None:
            return self.array[start:stop]
        data = np.empty(max(0, stop - start), dtype=self.dtype)
        if data.size and _pread_into(self.handle.fileno(), data, self.offset + start * self.dtype.itemsize) != data.nbytes:
            raise OSError(f"{self.path}: short read (truncated file?)")
        return data


def _pread_into(fd: int, out: np.ndarray, offset: int) -> int:
    """Read out.nbytes bytes at `offset` into `out` (no intermediate copy); returns the bytes read."""
    view = memoryview(out).cast("B")
    done = 0
    while done < view.nbytes:
        got = os.preadv(fd, [view[done:]], offset + done)
        if got == 0:
            break
        done += got
    return done


class CSRFile:
    """The CSR files of one part: rows of any users, as arrays or a scipy matrix."""

    def __init__(self, root: Path, part: str, n_items: int, memory: bool = False):
        paths = csr_paths(root, part)
        self.n_items = n_items
        self.memory = memory
        self.indptr = np.load(paths["indptr"])  # (U + 1) int64: small enough to keep (8 bytes a user)
        self.items = _Column(paths["items"], memory)
        self.ratings = _Column(paths["ratings"], memory)
        self.n_users = self.indptr.size - 1
        self.nnz = int(self.indptr[-1])

    def range(self, first: int, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row starts relative to the range, items, ratings) of users first..last-1."""
        lo, hi = int(self.indptr[first]), int(self.indptr[last])
        return self.indptr[first:last + 1] - lo, self.items.slice(lo, hi), self.ratings.slice(lo, hi)

    def rows(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row starts, items, ratings) of the given users, in their order."""
        users = np.asarray(users, dtype=np.int64)
        starts, ends = self.indptr[users], self.indptr[users + 1]
        lengths = ends - starts
        indptr = np.zeros(users.size + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if self.memory:
            positions = np.repeat(starts - indptr[:-1], lengths) + np.arange(indptr[-1])
            return indptr, self.items.array[positions], self.ratings.array[positions]
        items = np.empty(indptr[-1], dtype=np.int32)
        ratings = np.empty(indptr[-1], dtype=np.float32)
        for n, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            items[indptr[n]:indptr[n + 1]] = self.items.slice(start, end)
            ratings[indptr[n]:indptr[n + 1]] = self.ratings.slice(start, end)
        return indptr, items, ratings

    def ranges(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row owner, items) of sorted, distinct `users`, read one run of consecutive users at a time."""
        users = np.asarray(users, dtype=np.int64)
        if users.size == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        runs = np.split(users, np.flatnonzero(np.diff(users) != 1) + 1)
        items = [self.items.slice(int(self.indptr[run[0]]), int(self.indptr[run[-1] + 1])) for run in runs]
        lengths = self.indptr[users + 1] - self.indptr[users]
        return np.repeat(np.arange(users.size), lengths), np.concatenate(items)

    def gather(self, positions: np.ndarray, column: str = "items") -> np.ndarray:
        """items[positions] (or ratings), read in runs of consecutive positions (one read for the
        span when the positions are dense in it)."""
        return _gather(self.items if column == "items" else self.ratings, positions)

    def matrix(self, users: np.ndarray, binary: bool = True) -> sp.csr_matrix:
        """(len(users), I) scipy CSR of the users' rows."""
        indptr, items, ratings = self.rows(users)
        values = np.ones(items.size, dtype=np.float32) if binary else ratings
        return sp.csr_matrix((values, items, indptr), shape=(len(users), self.n_items))


def _gather(column: _Column, positions: np.ndarray) -> np.ndarray:
    if column.array is not None or positions.size == 0:
        return column.array[positions] if column.array is not None else np.zeros(0, dtype=column.dtype)
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    lo, hi = int(ordered[0]), int(ordered[-1]) + 1
    if hi - lo <= 4 * ordered.size:  # dense: one read of the span
        values = column.slice(lo, hi)[ordered - lo]
    else:
        # runs of positions without a gap (a repeated position stays in its run)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(ordered) > 1) + 1])
        ends = np.concatenate([starts[1:], [ordered.size]])
        runs = [column.slice(int(ordered[a]), int(ordered[b - 1]) + 1) for a, b in zip(starts, ends)]
        base = np.concatenate([[0], np.cumsum([r.size for r in runs])[:-1]])  # each run's place in `read`
        read = np.concatenate(runs)
        values = read[ordered - np.repeat(ordered[starts] - base, ends - starts)]
    out = np.empty_like(values)
    out[order] = values
    return out


class DiskRows:
    """The union of some parts' rows (parts are disjoint) as `PreparedDataset.user_items` gives them,
    read from the CSR files as needed: `rows[users]` is a scipy CSR of those users, `indptr` the
    row starts, `sum(axis=0)` the item counts (read a range of users at a time)."""

    def __init__(self, files: list[CSRFile], binary: bool = True):
        self.files, self.binary = files, binary
        self.shape = (files[0].n_users, files[0].n_items)
        lengths = sum(np.diff(f.indptr) for f in files)
        self.indptr = np.concatenate([[0], np.cumsum(lengths)])

    def __getitem__(self, users) -> sp.csr_matrix:
        users = np.asarray(users, dtype=np.int64)
        out = self.files[0].matrix(users, self.binary)
        for other in self.files[1:]:
            out = out + other.matrix(users, self.binary)
        return out

    def sum(self, axis: int = 0, chunk_users: int = 1 << 16) -> np.ndarray:
        if axis != 0:
            raise ValueError("DiskRows.sum: axis 0 only")
        total = np.zeros(self.shape[1], dtype=np.float64)
        for f in self.files:
            for first in range(0, f.n_users, chunk_users):
                _, items, ratings = f.range(first, min(f.n_users, first + chunk_users))
                total += np.bincount(items, weights=None if self.binary else ratings, minlength=self.shape[1])
        return total[None, :]

"""`PreparedDataset`: opens a directory written by `recscale prepare`.

It never reaches back to raw files. Matrices carry their orientation in their name
(`user_items`: rows are users, columns items).
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from recscale.data.dataset.csr import CSRFile, DiskRows
from recscale.data.dataset.schema import READABLE_SCHEMAS
from recscale.errors import RecscaleError

PROTOCOL_FILES = {"ncf": ("train", "test", "test_negatives"), "random": ("train", "test"), "temporal": ("train", "test"),
                  "seq": ("train", "valid", "test"),
                  "vae": ("train", "valid_foldin", "valid_heldout", "test_foldin", "test_heldout")}


def meta_digest(root: str | Path) -> str:
    """SHA-256 of a prepared directory's meta.json (the dataset's identity in runs and children)."""
    return hashlib.sha256((Path(root) / "meta.json").read_bytes()).hexdigest()


class PreparedDataset:
    def __init__(self, root: str | Path, streaming: bool = False):
        """`streaming`: `rows()` reads users' rows from the CSR files as asked, never a split whole."""
        self.root = Path(root)
        self.streaming = streaming
        meta_path = self.root / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise RecscaleError(f"{self.root}: not a prepared dataset (no meta.json; run `recscale prepare`)") from None
        except (OSError, ValueError) as exc:
            raise RecscaleError(f"{meta_path}: unreadable: {exc}") from None
        if not isinstance(self.meta, dict):
            raise RecscaleError(f"{meta_path}: not a recscale meta.json")
        version = self.meta.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise RecscaleError(f"{meta_path}: schema version {version}, this recscale reads "
                                f"{', '.join(map(str, READABLE_SCHEMAS))} (prepare the dataset again)")
        self._check_against_files(meta_path)

    def _check_against_files(self, meta_path: Path) -> None:
        """meta.json must describe the files beside it: protocol, files, row counts and id ranges
        (from the Parquet footers: no data is read)."""
        try:
            protocol, counts, files = self.meta["protocol"]["name"], self.meta["counts"], self.meta["files"]
            n_users, n_items = int(counts["users"]), int(counts["items"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RecscaleError(f"{meta_path}: incomplete meta.json (missing {exc})") from None
        if protocol not in PROTOCOL_FILES:
            raise RecscaleError(f"{meta_path}: unknown protocol {protocol!r}")
        missing = [p for p in (*PROTOCOL_FILES[protocol], "users", "items") if p not in files]
        if missing:
            raise RecscaleError(f"{meta_path}: the {protocol} protocol needs {', '.join(missing)}, not listed in files")
        expected = {**{p: counts.get(p) for p in files}, "users": n_users, "items": n_items}
        for part, name in files.items():
            path = self.root / name
            try:
                footer = pq.ParquetFile(path).metadata
            except Exception as exc:  # OSError, or pyarrow's own ArrowInvalid for bytes that are not Parquet
                raise RecscaleError(f"{path}: unreadable Parquet ({type(exc).__name__}); prepare the dataset again") from None
            if expected.get(part) is not None and footer.num_rows != expected[part]:
                raise RecscaleError(f"{path}: {footer.num_rows} rows, but meta.json says {expected[part]}; "
                                    f"prepare the dataset again")
            bounds = {"user": n_users, "item": n_items}
            for column, limit in bounds.items():
                high = _column_max(footer, column)
                if high is not None and high >= limit:
                    raise RecscaleError(f"{path}: {column} id {high} is outside the {limit} {column}s of meta.json; "
                                        f"prepare the dataset again")
        if protocol == "ncf":
            n = self.meta["protocol"].get("test_negatives", 0)
            for part in ("valid", "test"):
                if part in files and f"{part}_negatives" in files and counts.get(f"{part}_negatives") != counts.get(part, 0) * n:
                    raise RecscaleError(f"{meta_path}: {part}_negatives should hold {n} rows per {part} row")

    def __repr__(self) -> str:
        counts = self.meta["counts"]
        parts = ", ".join(f"{name} {counts[name]:,}" for name in ("train", "valid", "test", "valid_heldout",
                                                                  "test_heldout") if name in counts)
        source = self.meta.get("source", {}).get("dataset", "?")
        return (f"PreparedDataset({str(self.root)!r}: {source}, protocol {self.protocol}, {self.n_users:,} users x "
                f"{self.n_items:,} items; {parts})")

    @property
    def tie_break(self) -> str:
        """How interactions with equal timestamps were ordered (schema 1 datasets: by item id)."""
        return self.meta["protocol"].get("tie_break", "item")

    @property
    def protocol(self) -> str:
        return self.meta["protocol"]["name"]

    @functools.cached_property
    def meta_digest(self) -> str:
        """SHA-256 of meta.json: what a run records of the dataset it was trained on."""
        return meta_digest(self.root)

    @property
    def lineage(self) -> list[str]:
        """meta.json digests of this dataset and of those it extends (`prepare --extend`), nearest
        first: the datasets whose user and item numbers this one keeps."""
        parent = self.meta["protocol"].get("parent")
        return [self.meta_digest, *([parent["meta_sha256"], *parent.get("ancestors", [])] if parent else [])]

    @property
    def sampled_negatives(self) -> int | None:
        """Negatives each held-out positive is ranked against under a sampled protocol (ncf); None
        when evaluation ranks all items."""
        if self.protocol != "ncf":
            return None
        counts = self.meta["counts"]
        return counts.get("test_negatives", 0) // max(counts.get("test", 1), 1)

    @property
    def n_users(self) -> int:
        return self.meta["counts"]["users"]

    @property
    def n_items(self) -> int:
        return self.meta["counts"]["items"]

    def has(self, part: str) -> bool:
        return part in self.meta["files"]

    @functools.cache
    def table(self, part: str) -> pl.DataFrame:
        if part not in self.meta["files"]:
            raise RecscaleError(f"{self.root}: no {part!r} split (has {', '.join(self.meta['files'])})")
        path = self.root / self.meta["files"][part]
        try:
            return pl.read_parquet(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise RecscaleError(f"{path}: unreadable: {str(exc).splitlines()[0]}") from None

    def columns(self, part: str, *names: str) -> tuple[torch.Tensor, ...]:
        """Columns of a split as CPU tensors (int64 for ids, float32 for ratings)."""
        frame = self.table(part)
        return tuple(torch.from_numpy(frame[name].to_numpy().astype(
            np.float32 if name == "rating" else np.int64)) for name in names)

    @functools.cache
    def user_items(self, *parts: str, binary: bool = True) -> sp.csr_matrix:
        """CSR matrix (n_users x n_items) of the union of the given splits. Cached: validation asks
        for the same matrices every epoch; callers must not modify the result."""
        frames = [self.table(p).select("user", "item", "rating") for p in parts]
        frame = pl.concat(frames)
        values = np.ones(frame.height, dtype=np.float32) if binary else frame["rating"].to_numpy()
        matrix = sp.csr_matrix((values, (frame["user"].to_numpy(), frame["item"].to_numpy())),
                               shape=(self.n_users, self.n_items), dtype=np.float32)
        matrix.sum_duplicates()
        return matrix

    @functools.cache
    def sequences(self, *parts: str) -> tuple[np.ndarray, np.ndarray]:
        """(indptr (U + 1,) int64, items int32) of each user's items of the union of `parts` in time
        order (the `seq` protocol's `position`): the items of user u are items[indptr[u]:indptr[u + 1]],
        oldest first. Cached; callers must not modify the result."""
        if self.protocol != "seq":
            raise RecscaleError(f"{self.root}: prepared under {self.protocol!r}, which keeps no sequence order; "
                                f"prepare it with --protocol seq")
        frame = pl.concat([self.table(p).select("user", "item", "position") for p in parts]).sort("user", "position")
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(frame["user"].to_numpy(), minlength=self.n_users), out=indptr[1:])
        return indptr, frame["item"].to_numpy().astype(np.int32)

    @property
    def has_index(self) -> bool:
        """Whether the per-user CSR files exist (datasets prepared before they did have none)."""
        return all(part in self.meta.get("index", {}) for part in self.meta["files"]
                   if part not in ("users", "items") and not part.endswith("_negatives"))

    @functools.cache
    def csr(self, part: str) -> CSRFile:
        """The CSR files of a part: read by position when streaming, else loaded whole."""
        if not self.has_index:
            raise RecscaleError(f"{self.root}: prepared without the per-user index that streaming reads; "
                                f"prepare it again with this recscale")
        if part not in self.meta["index"]:
            raise RecscaleError(f"{self.root}: no {part!r} split (has {', '.join(self.meta['index'])})")
        return CSRFile(self.root, part, self.n_items, memory=not self.streaming)

    def rows(self, *parts: str, binary: bool = True):
        """The users' rows of the union of `parts`: `user_items` in memory, or a DiskRows that reads
        only the rows asked for when streaming (the same values either way)."""
        if not self.streaming:
            return self.user_items(*parts, binary=binary)
        return DiskRows([self.csr(p) for p in parts], binary)

    def candidate_batches(self, part: str, batch_size: int, rank: int = 0, world_size: int = 1):
        """NCF evaluation rows of `part`, read a row group at a time: (users (B,), positives (B,),
        negatives (B, N)) of every `world_size`-th row from `rank` on."""
        n = self.meta["protocol"]["test_negatives"]
        rows = pq.ParquetFile(self.root / self.meta["files"][part])
        negatives = (pq.ParquetFile(self.root / self.meta["files"][f"{part}_negatives"]).iter_batches(
            batch_size=batch_size * n, columns=["user", "item"]) if n else None)
        at = 0
        for batch in rows.iter_batches(batch_size=batch_size, columns=["user", "item"]):
            users = batch.column("user").to_numpy().astype(np.int64)
            items = batch.column("item").to_numpy().astype(np.int64)
            if negatives is not None:
                neg = next(negatives)
                neg_users = neg.column("user").to_numpy()[::n]
                if not np.array_equal(neg_users, users):
                    raise RecscaleError(f"{self.root}: {part} negatives are not aligned with the {part} split")
                neg_items = neg.column("item").to_numpy().astype(np.int64).reshape(-1, n)
            else:
                neg_items = np.zeros((users.size, 0), dtype=np.int64)
            mine = (np.arange(at, at + users.size) % world_size) == rank
            at += users.size
            yield (torch.from_numpy(users[mine]), torch.from_numpy(items[mine]), torch.from_numpy(neg_items[mine]))

    def negatives(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """NCF evaluation negatives: (users (U,), items (U, N)), in the order of the split's rows."""
        n = self.meta["protocol"]["test_negatives"]
        if n == 0:  # no negatives: each positive is ranked alone
            users = torch.from_numpy(self.table(part)["user"].to_numpy().astype(np.int64))
            return users, torch.zeros((users.numel(), 0), dtype=torch.int64)
        frame = self.table(f"{part}_negatives")
        users = torch.from_numpy(frame["user"].to_numpy().astype(np.int64))
        items = torch.from_numpy(frame["item"].to_numpy().astype(np.int64)).reshape(-1, n)
        return users[::n].contiguous(), items

    def training_users(self) -> torch.Tensor:
        """Contiguous ids of the users whose rows are trained on: the vae protocol's training group,
        otherwise every user with a training interaction."""
        if self.protocol == "vae":
            return self.group_users("train")
        return torch.from_numpy(np.flatnonzero(np.diff(self.rows("train").indptr)))

    def group_users(self, group: str) -> torch.Tensor:
        """Contiguous ids of a user group (`train`, `valid`, `test`) of the vae protocol."""
        users = self.table("users")
        return torch.from_numpy(users.filter(pl.col("group") == group)["user"].to_numpy().astype(np.int64))

    def original_user_ids(self) -> np.ndarray:
        return self.table("users")["original_id"].to_numpy()

    def original_item_ids(self) -> np.ndarray:
        return self.table("items")["original_id"].to_numpy()

    def item_counts(self) -> np.ndarray:
        """(I,) float64: training users per item (the popularity fallback, exports and novelty)."""
        return np.asarray(self.rows("train").sum(axis=0), dtype=np.float64).ravel()

    def item_genres(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Multi-hot genres of every item as (values, offsets) for nn.EmbeddingBag, or None."""
        items = self.table("items")
        if "genres" not in items.columns:
            return None
        lengths = items["genres"].list.len().to_numpy()
        values = items["genres"].explode().drop_nulls().to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return torch.from_numpy(values), torch.from_numpy(offsets)


def _column_max(footer, column: str) -> int | None:
    """The largest value of an integer column from the row groups' statistics (None when absent)."""
    schema = footer.schema.to_arrow_schema()
    if column not in schema.names:
        return None
    index = schema.names.index(column)
    highs = []
    for g in range(footer.num_row_groups):
        stats = footer.row_group(g).column(index).statistics
        if stats is None or not stats.has_min_max:
            return None
        highs.append(stats.max)
    return max(highs) if highs else None

"""`PreparedDataset`: opens a directory written by `recscale prepare`.

It never reaches back to raw files. Matrices carry their orientation in their name
(`user_items`: rows are users, columns items).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recscale.data.prepare import SCHEMA_VERSION
from recscale.errors import RecscaleError


class PreparedDataset:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise RecscaleError(f"{self.root}: not a prepared dataset (no meta.json; run `recscale prepare`)") from None
        except (OSError, ValueError) as exc:
            raise RecscaleError(f"{meta_path}: unreadable: {exc}") from None
        version = self.meta.get("schema_version")
        if version != SCHEMA_VERSION:
            raise RecscaleError(f"{meta_path}: schema version {version}, this recscale reads {SCHEMA_VERSION} "
                                f"(prepare the dataset again)")

    @property
    def protocol(self) -> str:
        return self.meta["protocol"]["name"]

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

    def negatives(self, part: str) -> tuple[torch.Tensor, torch.Tensor]:
        """NCF evaluation negatives: (users (U,), items (U, N)), in the order of the split's rows."""
        frame = self.table(f"{part}_negatives")
        users = torch.from_numpy(frame["user"].to_numpy().astype(np.int64))
        n = self.meta["protocol"]["test_negatives"]
        items = torch.from_numpy(frame["item"].to_numpy().astype(np.int64)).reshape(-1, n)
        return users[::n].contiguous(), items

    def group_users(self, group: str) -> torch.Tensor:
        """Contiguous ids of a user group (`train`, `valid`, `test`) of the vae protocol."""
        users = self.table("users")
        return torch.from_numpy(users.filter(pl.col("group") == group)["user"].to_numpy().astype(np.int64))

    def original_user_ids(self) -> np.ndarray:
        return self.table("users")["original_id"].to_numpy()

    def original_item_ids(self) -> np.ndarray:
        return self.table("items")["original_id"].to_numpy()

    def item_genres(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Multi-hot genres of every item as (values, offsets) for nn.EmbeddingBag, or None."""
        items = self.table("items")
        if "genres" not in items.columns:
            return None
        lengths = items["genres"].list.len().to_numpy()
        values = items["genres"].explode().drop_nulls().to_numpy().astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        return torch.from_numpy(values), torch.from_numpy(offsets)

"""Original ids -> contiguous ids 0..n-1 (text ids through their sorted order), and the id maps that
keep the original ids beside them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recscale.config.prepare import PrepareConfig
from recscale.data.prepare.protocols import (
    ORDER_COLUMNS,
)
from recscale.errors import RecscaleError


def encode_text_ids(frames: dict[str, pl.DataFrame]) -> tuple[dict[str, pl.DataFrame], dict[str, pl.Series]]:
    """Text ids (Utf8 user or item columns) -> integers 0..n-1 in sorted order of the text, the
    same numbering across all `frames`. Returns the frames and, for each column that was text, the
    text of each number (its position), so that the original ids can be written back."""
    names: dict[str, pl.Series] = {}
    for column in ("user", "item"):
        if not any(f.schema[column] == pl.Utf8 for f in frames.values() if f.height):
            continue
        text = pl.concat([f[column].cast(pl.Utf8) for f in frames.values()]).unique().sort()
        lookup = pl.DataFrame({column: text, "_id": pl.int_range(text.len(), eager=True, dtype=pl.Int64)})
        frames = {name: f.with_columns(pl.col(column).cast(pl.Utf8))
                         .join(lookup, on=column, how="left", maintain_order="left")
                         .with_columns(pl.col("_id").alias(column)).drop("_id")
                  for name, f in frames.items()}
        names[column] = text
    return frames, names


def id_map(ids: np.ndarray, name: str, names: dict[str, pl.Series] | None = None) -> pl.DataFrame:
    """Contiguous ids 0..n-1 for `ids` in the given order, with the original ids beside them:
    `ids` themselves, or their text for columns that had text ids (`names`, from encode_text_ids).
    `_key` keeps `ids` for joining with the interactions; it is not written."""
    text = (names or {}).get(name)
    original = text.gather(ids) if text is not None else ids
    return pl.DataFrame({name: np.arange(ids.size, dtype=np.int32), "_key": ids, "original_id": original})


def sorted_id_maps(frame: pl.DataFrame, names: dict[str, pl.Series] | None = None
                   ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """User and item maps over every id in `frame`, in sorted order of the original ids."""
    return tuple(id_map(np.sort(frame[c].unique().to_numpy()), c, names) for c in ("user", "item"))


def parent_maps(cfg: PrepareConfig) -> tuple[pl.DataFrame, pl.DataFrame, dict] | None:
    """(users, items, parent record) of `cfg.extend`'s dataset, or None without one. A parent
    prepared under another protocol or with other filters is refused in one line: its numbers
    would belong to other users and items."""
    if cfg.extend is None:
        return None
    from recscale.data.dataset.prepared import PreparedDataset
    parent = PreparedDataset(cfg.extend)
    asked = {"protocol": cfg.protocol, "min_rating": cfg.effective_min_rating,
             "min_user_interactions": cfg.effective_min_user_interactions, "tie_break": cfg.tie_break}
    had = {"protocol": parent.protocol, **{k: parent.meta["protocol"].get(k) for k in list(asked)[1:]}}
    differ = [k for k in asked if asked[k] != had[k]]
    if differ:
        k = differ[0]
        raise RecscaleError(f"--extend {cfg.extend}: prepared with {k} {had[k]!r}, this one asks {asked[k]!r}; "
                            f"extend a dataset prepared the same way")
    genres = parent.meta.get("features", {}).get("genres", {}).get("vocabulary", [])
    record = {"path": str(parent.root), "meta_sha256": parent.meta_digest, "ancestors": parent.lineage[1:],  # nearest first
              "users": parent.n_users, "items": parent.n_items, "genres": genres}
    return parent.table("users"), parent.table("items"), record


def extend_map(map: pl.DataFrame, name: str, parent: pl.DataFrame) -> pl.DataFrame:
    """`map` (name, _key, original_id[, group]) renumbered so that every id of `parent` keeps its
    number, even one absent here (then without `_key`: it has no interactions), and the new ones
    follow in `map`'s order. Sorted by number."""
    parent = parent.select(pl.col(name).cast(pl.Int32).alias("_parent"), "original_id")
    if parent.schema["original_id"] != map.schema["original_id"]:
        kind = {True: "text", False: "integer"}
        raise RecscaleError(f"--extend: the parent's {name} ids are {kind[parent.schema['original_id'] == pl.Utf8]}, "
                            f"this log's are {kind[map.schema['original_id'] == pl.Utf8]}")
    joined = map.join(parent, on="original_id", how="left", maintain_order="left")
    new = joined["_parent"].is_null()
    numbers = joined["_parent"].fill_null(-1).to_numpy().astype(np.int32)
    numbers[new.to_numpy()] = parent.height + np.arange(int(new.sum()), dtype=np.int32)
    kept = joined.with_columns(pl.Series(name, numbers.astype(np.int32))).drop("_parent")
    absent = parent.join(map.select("original_id"), on="original_id", how="anti") \
        .select(pl.col("_parent").alias(name), "original_id")
    return pl.concat([kept, absent], how="diagonal_relaxed").select(kept.columns).sort(name)


def encode_ids(frame: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Replace ids by contiguous ones (rows whose ids are not in the maps are dropped). The maps'
    `_key` column holds the ids as `frame` has them (the numbers of text ids)."""
    return (frame.join(users.select(pl.col("user").alias("_u"), pl.col("_key")), left_on="user", right_on="_key")
                 .join(items.select(pl.col("item").alias("_i"), pl.col("_key")), left_on="item", right_on="_key")
                 .select(pl.col("_u").alias("user"), pl.col("_i").alias("item"),
                         *[c for c in frame.columns if c not in ("user", "item", *ORDER_COLUMNS)])
                 .sort("user", "item"))

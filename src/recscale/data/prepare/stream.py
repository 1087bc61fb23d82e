"""`recscale prepare --engine stream`: the same prepared dataset as the in-memory path, for logs
larger than memory, with Polars' streaming engine and partitioned passes.

1. Scan (streaming): rows per original user, in one group-by over the input. Users sorted by
   their original ids get their dense order; the users are cut into buckets of contiguous ranges
   holding about `rows_per_bucket` rows each.
2. Partition (streaming): every row, with its line number in the input, is written to its
   user's bucket (Parquet, `sink_parquet` with `PartitionBy`).
3. Filter, per bucket (all of a user's rows are in one bucket): validation, minimum rating, one
   row per (user, item) by the tie rule, minimum interactions per user; the survivors' users and
   items are collected (small), which fixes the final ids and, under `vae`, the user groups.
4. Split, per bucket in user order: the protocol's own functions (data/prepare/protocols.py) on the bucket's
   users. Every random draw a protocol makes over the whole data in (user, item) order is taken
   at the bucket's offset in that order (`seeded_stream`: PCG64 advanced), so a bucket gets the
   very numbers the in-memory path gives its rows.
5. NCF evaluation negatives, drawn in the in-memory path's chunks of users with one generator,
   each chunk from the positives of its users only.
6. The parts of all buckets are concatenated in order into one Parquet file each (row groups of
   `ROW_GROUP_ROWS`), then the per-user CSR indexes and meta.json as for any prepared dataset.

Peak memory: one bucket and its intermediates (about 150-250 bytes a row), the per-user row
counts and id maps (8-16 bytes a user, plus the original id), and one chunk of negatives.
tests/data/test_streaming.py checks that both engines write the same content.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import torch

from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.readers import (
    CONTROL,
)
from recscale.data.ingest.scan import ScanSource
from recscale.data.prepare.filters import filter_rows
from recscale.data.prepare.ids import extend_map, parent_maps
from recscale.data.prepare.negatives import NEGATIVE_CHUNK_USERS, distinct_negatives_chunk
from recscale.data.prepare.output import dataset_meta, finish_prepared, item_table, refuse_existing
from recscale.data.prepare.protocols import PART_ORDER, protocol_params, split_users, vae_groups, vae_parts, with_order
from recscale.data.prepare.temporal import Cold, cutoffs, split_by_time
from recscale.errors import RecscaleError
from recscale.fsutil import (
    atomic_directory,
    remove_scratch,
    remove_stale_scratch,
    scratch_prefix,
)
from recscale.progress import bar

ROWS_PER_BUCKET = 2_000_000


ROW_GROUP_ROWS = 1 << 20


INTERACTION_SCHEMA = {"user": pl.Int32, "item": pl.Int32, "rating": pl.Float32, "timestamp": pl.Int64}


def _per_user_rows(source: ScanSource) -> tuple[pl.DataFrame, frozenset]:
    """Pass 1: (users sorted by original id with their row counts, the columns read as text)."""
    text_ids = source.text_ids
    for attempt in range(2):
        try:
            counts = (source.lazy(text_ids).group_by("user").agg(pl.len().alias("rows"))
                      .collect(engine="streaming").sort("user"))
            return counts, text_ids
        except pl.exceptions.PolarsError as exc:
            if attempt == 0 and not text_ids:  # an id that is not an integer: ids as text
                text_ids = frozenset({"user", "item"})
                continue
            raise RecscaleError(source.diagnose() or f"{source.name}: cannot parse: {str(exc).splitlines()[0]}") from None
    raise AssertionError("unreachable")


def _buckets(counts: np.ndarray, rows_per_bucket: int) -> np.ndarray:
    """First dense user of each bucket: contiguous user ranges of about `rows_per_bucket` rows."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1]) if cumulative.size else 0
    marks = np.arange(rows_per_bucket, total, rows_per_bucket)
    return np.unique(np.concatenate([[0], np.searchsorted(cumulative, marks, side="right")]))


def _partition(source: ScanSource, text_ids: frozenset, users: pl.Series, starts: np.ndarray, root: Path) -> None:
    """Pass 2: every row to its user's bucket, with the user's dense rank (`_u`). A streaming join
    with the (small) user table: `search_sorted` against a literal column would gather the whole
    input first (5 GiB at 100M rows, measured)."""
    ranks = np.arange(users.len(), dtype=np.int64)
    table = pl.DataFrame({"user": users, "_u": ranks,
                          "_bucket": (np.searchsorted(starts, ranks, side="right") - 1).astype(np.int32)})
    frame = source.lazy(text_ids).join(table.lazy(), on="user", how="left")
    try:
        frame.sink_parquet(pl.PartitionBy(str(root) + "/", key="_bucket", include_key=False), mkdir=True,
                           engine="streaming")
    except pl.exceptions.PolarsError as exc:
        raise RecscaleError(source.diagnose() or f"{source.name}: cannot parse: {str(exc).splitlines()[0]}") from None


def _bucket(root: Path, b: int) -> pl.DataFrame:
    files = sorted((root / f"_bucket={b}").glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]).sort("_line") if files else pl.DataFrame()


def _validate(frame: pl.DataFrame, source: ScanSource) -> None:
    """What the in-memory readers refuse: missing values, non-finite ratings, fractional float ids,
    control characters in text ids. Named by line when the input can be walked."""
    problems = [frame.null_count().sum_horizontal().item() > 0,
                bool((~frame["rating"].is_finite()).any())]
    for column in ("user", "item"):
        col = frame[column]
        if col.dtype == pl.Utf8:
            problems.append(bool(col.str.contains(CONTROL).any()))
        elif col.dtype.is_float():
            problems.append(bool((~col.is_finite() | (col != col.floor())).any()))
    if any(problems):
        bad = frame.filter(pl.any_horizontal(pl.all().is_null()) | ~pl.col("rating").is_finite())
        where = f"row {int(bad['_line'][0]) + 1}" if bad.height else "a row"
        raise RecscaleError(source.diagnose() or f"{source.name}: {where}: a missing, non-finite or malformed value")


def encode_final_ids(frame: pl.DataFrame, user_ids: np.ndarray, item_ids: np.ndarray,
                     item_numbers: np.ndarray | None = None) -> pl.DataFrame:
    """Pre-ids -> final contiguous ids (positions in the sorted final id arrays; items then through
    `item_numbers` when a parent's numbers are kept), sorted (user, item)."""
    item = pl.lit(pl.Series(item_ids)).search_sorted(pl.col("item"))
    if item_numbers is not None:
        item = pl.lit(pl.Series(item_numbers)).gather(item)
    return frame.with_columns(
        pl.lit(pl.Series(user_ids)).search_sorted(pl.col("user")).cast(pl.Int32).alias("user"),
        item.cast(pl.Int32).alias("item"),
    ).select("user", "item", pl.col("rating").cast(pl.Float32), "timestamp",
             *(["position"] if "position" in frame.columns else [])).sort("user", "item")


def _parent_order(counts: pl.DataFrame, parent_users: pl.DataFrame) -> pl.DataFrame:
    """The users' dense order when a parent's numbers are kept: the parent's users first, in its
    numbering (those absent from this log with no rows), then the new ones in sorted order. Buckets
    follow this order, so the parts stay sorted by final id."""
    known = parent_users.select(pl.col("original_id").alias("user"))
    if known.schema["user"] != counts.schema["user"]:
        raise RecscaleError("--extend: the parent's user ids and this log's are not of one kind (text and integers)")
    first = known.join(counts, on="user", how="left", maintain_order="left").with_columns(pl.col("rows").fill_null(0))
    return pl.concat([first.select(counts.columns), counts.join(known, on="user", how="anti")])


def _item_numbers(item_ids: np.ndarray, parent) -> tuple[pl.DataFrame, np.ndarray | None]:
    """(the item map, written as items.parquet, and each sorted pre-id's final number or None):
    positions in `item_ids`, or the parent's numbers kept and new items after them."""
    items = pl.DataFrame({"item": np.arange(item_ids.size, dtype=np.int32), "_key": item_ids, "original_id": item_ids})
    if parent is None:
        return items, None
    extended = extend_map(items, "item", parent[1])
    numbers = extended.filter(pl.col("_key").is_not_null()).sort("_key")["item"].to_numpy()
    return extended, numbers


class _PartWriter:
    """One Parquet file per part, written a bucket at a time."""

    def __init__(self, root: Path):
        self.root, self.writers, self.counts = root, {}, {}
        self.rating_min, self.rating_max = np.inf, -np.inf

    def write(self, name: str, frame: pl.DataFrame) -> None:
        table = frame.to_arrow()
        if name not in self.writers:
            self.writers[name] = pq.ParquetWriter(self.root / f"{name}.parquet", table.schema)
            self.counts[name] = 0
        if frame.height:
            self.writers[name].write_table(table, row_group_size=ROW_GROUP_ROWS)
            self.counts[name] += frame.height
            if "rating" in frame.columns:
                self.rating_min = min(self.rating_min, float(frame["rating"].min()))
                self.rating_max = max(self.rating_max, float(frame["rating"].max()))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _negatives(frames: Callable[[], list[dict[str, pl.DataFrame]]], part: str, n_items: int, n: int,
               generator: torch.Generator, writer: _PartWriter) -> None:
    """The NCF evaluation negatives of `part`, user chunks as the in-memory path cuts them, each
    drawn from its users' positives in every part."""
    pending_users: list[np.ndarray] = []
    pending_keys: list[np.ndarray] = []
    count = 0

    def flush(take: int) -> None:
        nonlocal pending_users, pending_keys, count
        users = np.concatenate(pending_users)
        keys = np.concatenate(pending_keys)
        chunk, rest = users[:take], users[take:]
        last = chunk[-1] if chunk.size else -1
        chunk_keys = keys[keys // n_items <= last]
        negatives = distinct_negatives_chunk(torch.from_numpy(np.unique(chunk_keys)), torch.from_numpy(chunk),
                                             n_items, n, generator)
        writer.write(f"{part}_negatives", pl.DataFrame({
            "user": np.repeat(chunk, n).astype(np.int32), "item": negatives.reshape(-1).numpy().astype(np.int32)}))
        pending_users = [rest] if rest.size else []
        pending_keys = [keys[keys // n_items > last]] if rest.size else []
        count -= take

    for parts in frames():
        users = parts[part]["user"].to_numpy().astype(np.int64)
        if not users.size:
            continue
        everything = pl.concat([p.select("user", "item") for name, p in parts.items() if not name.endswith("_negatives")])
        everything = everything.filter(pl.col("user").is_in(users))
        pending_users.append(users)
        pending_keys.append(everything["user"].to_numpy().astype(np.int64) * n_items + everything["item"].to_numpy())
        count += users.size
        while count >= NEGATIVE_CHUNK_USERS:
            flush(NEGATIVE_CHUNK_USERS)
    if count:
        flush(count)
    if f"{part}_negatives" not in writer.writers:
        writer.write(f"{part}_negatives", pl.DataFrame({"user": [], "item": []}, schema={"user": pl.Int32, "item": pl.Int32}))


def prepare_stream(source: ScanSource, cfg: PrepareConfig, out: str | Path, overwrite: bool = False,
                   rows_per_bucket: int = ROWS_PER_BUCKET) -> dict:
    """Write the prepared dataset of `source` under `cfg` to `out` with bounded memory; returns
    meta.json's content (the same as `prepare` gives for the same input and settings)."""
    out = Path(out)
    refuse_existing(out, overwrite, (*source.files, *filter(None, [cfg.extend])))
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(out)  # what a killed run on the same output left
    scratch = Path(tempfile.mkdtemp(prefix=scratch_prefix(out, "scratch"), dir=out.parent))
    try:
        return _prepare_stream(source, cfg, out, overwrite, rows_per_bucket, scratch)
    except OSError as exc:
        raise RecscaleError(f"{out}: cannot write: {exc.strerror or exc}") from exc
    finally:
        remove_scratch(scratch)


def _prepare_stream(source: ScanSource, cfg: PrepareConfig, out: Path, overwrite: bool, rows_per_bucket: int,
                    scratch: Path) -> dict:
    counts, text_ids = _per_user_rows(source)
    if counts.height == 0:
        raise RecscaleError(f"{source.name}: no rows")
    parent = parent_maps(cfg)
    if parent is not None:
        if cfg.protocol == "vae":
            raise RecscaleError("--extend with --protocol vae: prepared in memory only for now (--engine memory)")
        counts = _parent_order(counts, parent[0])
    users = counts["user"]
    starts = _buckets(counts["rows"].to_numpy(), rows_per_bucket)
    raw_rows_before = np.concatenate([[0], np.cumsum(counts["rows"].to_numpy())])[starts]
    _partition(source, text_ids, users, starts, scratch / "raw")
    text_items = "item" in text_ids and bool(
        pl.scan_parquet(scratch / "raw" / "**" / "*.parquet").select(pl.col("item").cast(pl.Int64, strict=False)
                                                                     .is_null().any()).collect().item())

    # 3. filter each bucket; users and items of the survivors
    survivors, items_seen = [], []
    for b in bar(range(starts.size), desc="prepare: filter", unit="bucket"):
        frame = _bucket(scratch / "raw", b)
        if frame.height == 0:
            continue
        _validate(frame, source)
        frame = frame.with_columns(pl.col("_u").alias("user"))
        if not text_items and frame.schema["item"] == pl.Utf8:
            frame = frame.with_columns(pl.col("item").cast(pl.Int64))
        frame = filter_rows(with_order(frame.drop("_u", "_bucket", strict=False), cfg.tie_break, cfg.seed,
                                       int(raw_rows_before[b])), cfg)
        frame.write_parquet(scratch / f"filtered-{b}.parquet")
        survivors.append(frame["user"].unique().to_numpy())
        items_seen.append(frame["item"].unique())
    user_ids = np.sort(np.concatenate(survivors)) if survivors else np.zeros(0, dtype=np.int64)
    if parent is not None:  # the parent's users keep their numbers, filtered out here or not
        user_ids = np.union1d(np.arange(parent[2]["users"]), user_ids)
    if user_ids.size == 0:
        raise RecscaleError(f"no interactions left after filtering (min_rating={cfg.effective_min_rating}, "
                            f"min_user_interactions={cfg.effective_min_user_interactions})")
    buckets = [b for b in range(starts.size) if (scratch / f"filtered-{b}.parquet").exists()]

    def filtered(b: int) -> pl.DataFrame:
        return pl.read_parquet(scratch / f"filtered-{b}.parquet")

    params = protocol_params(cfg, user_ids.size)
    writer = _PartWriter(scratch)
    final_users = user_ids
    group_of = None
    if cfg.protocol == "vae":
        groups = vae_groups(user_ids, params["heldout_users"], cfg.seed)
        order = np.concatenate([np.sort(groups[g]) for g in ("train", "valid", "test")])
        group_of = np.repeat(["train", "valid", "test"], [groups[g].size for g in ("train", "valid", "test")])
        train_set = np.sort(groups["train"])
        item_ids = np.sort(pl.concat([filtered(b).filter(pl.col("user").is_in(train_set))["item"].unique()
                                      for b in buckets]).unique().to_numpy())
        items_map, _ = _item_numbers(item_ids, None)  # vae with --extend is refused above
        final_users = order
        # the final id of a pre-id is its position in `order` (groups one after the other): the k-th
        # smallest pre-id sits at argsort(order)[k]
        rank = np.argsort(order, kind="stable")
        sorted_order = order[rank]
        offsets = {"valid": 0, "test": 0}
        for b in bar(buckets, desc="prepare: split", unit="bucket"):
            parts = vae_parts(filtered(b), groups, item_ids, cfg.holdout_fraction, cfg.seed, offsets)
            for name, part in parts.items():
                encoded = encode_final_ids(part.filter(pl.col("item").is_in(item_ids)), sorted_order, item_ids)
                encoded = encoded.with_columns(
                    pl.lit(pl.Series(rank)).gather(pl.col("user")).cast(pl.Int32).alias("user")).sort("user", "item")
                writer.write(name, encoded)
    elif cfg.protocol == "temporal":  # the cuts over the whole filtered log, then bucket by bucket
        log = pl.scan_parquet([scratch / f"filtered-{b}.parquet" for b in buckets])
        valid_cut, cut = cutoffs(cfg, log)
        train_items = log.filter(pl.col("timestamp") < valid_cut).select(pl.col("item").unique()).collect()["item"]
        item_ids = np.sort(train_items.to_numpy())
        items_map, item_numbers = _item_numbers(item_ids, parent)
        cold = Cold()
        for b in bar(buckets, desc="prepare: split", unit="bucket"):
            parts = cold.keep_known_items(split_by_time(filtered(b), valid_cut, cut, cfg.valid), train_items)
            for name in (n for n in PART_ORDER if n in parts):
                writer.write(name, encode_final_ids(parts[name], user_ids, item_ids, item_numbers))
        params |= {"valid_cutoff": valid_cut, "cutoff": cut, "cold": cold.report()}
    else:
        item_ids = np.sort(pl.concat(items_seen).unique().to_numpy())
        items_map, item_numbers = _item_numbers(item_ids, parent)
        offset = 0
        for b in bar(buckets, desc="prepare: split", unit="bucket"):
            frame = filtered(b)
            parts = split_users(frame, cfg, offset)
            offset += frame.height
            for name in (n for n in PART_ORDER if n in parts):
                writer.write(name, encode_final_ids(parts[name], user_ids, item_ids, item_numbers))
    writer.close()
    names = list(writer.counts)
    if writer.counts.get("train", 0) == 0:
        raise RecscaleError("no training interactions left after the split")

    if cfg.protocol == "ncf":
        negatives = _PartWriter(scratch)
        generator = torch.Generator().manual_seed(cfg.seed)

        def encoded_buckets():  # the written parts, re-read a range of users at a time
            for lo, hi in _user_ranges(scratch, names, user_ids.size):
                yield {n: pl.scan_parquet(scratch / f"{n}.parquet").filter(pl.col("user").is_between(lo, hi - 1))
                       .collect() for n in names}

        for part in (("valid", "test") if cfg.valid else ("test",)):
            _negatives(encoded_buckets, part, items_map.height, cfg.test_negatives, generator, negatives)
        negatives.close()
        names += list(negatives.counts)
        writer.counts |= negatives.counts

    # 6. the directory as every prepared dataset has it
    original_users = users.gather(final_users).to_numpy() if users.dtype == pl.Utf8 else users.to_numpy()[final_users]
    users_table = pl.DataFrame({"user": np.arange(final_users.size, dtype=np.int32), "original_id": original_users})
    if group_of is not None:
        users_table = users_table.with_columns(pl.Series("group", group_of))
    items = items_map
    table, vocab = item_table(items, source.items, parent[2]["genres"] if parent is not None else [])
    groups_count = ({g: int((group_of == g).sum()) for g in ("train", "valid", "test")} if group_of is not None
                    else None)
    part_counts = {name: writer.counts[name] for name in names}
    if parent is not None:
        params |= {"parent": parent[2]}
    meta = dataset_meta(source.name, source.files, cfg.protocol, params, final_users.size, items.height,
                        part_counts, vocab, writer.rating_min, writer.rating_max,
                        writer.rating_min != writer.rating_max, groups_count)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        for name in names:
            os.replace(scratch / f"{name}.parquet", tmp / f"{name}.parquet")
        users_table.write_parquet(tmp / "users.parquet")
        table.write_parquet(tmp / "items.parquet")
        finish_prepared(tmp, meta)
    return meta


def _user_ranges(root: Path, names: list[str], n_users: int, rows: int = ROWS_PER_BUCKET):
    """Contiguous user ranges of about `rows` training rows (from the train part's row groups)."""
    meta = pq.ParquetFile(root / "train.parquet").metadata
    column = meta.schema.to_arrow_schema().names.index("user")
    bounds = [0]
    acc = 0
    for g in range(meta.num_row_groups):
        acc += meta.row_group(g).num_rows
        if acc >= rows:
            stats = meta.row_group(g).column(column).statistics
            bounds.append(int(stats.max) + 1)
            acc = 0
    bounds.append(n_users)
    bounds = sorted(set(bounds))
    return list(zip(bounds[:-1], bounds[1:]))

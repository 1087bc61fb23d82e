"""`recscale prepare`: raw interactions -> a prepared dataset directory (Parquet + meta.json).

Steps: filter (minimum rating, one row per (user, item) keeping the latest, minimum interactions per
user), split by protocol, encode ids as contiguous integers, sample the NCF evaluation negatives,
encode the genre vocabulary, then write everything into a temporary directory renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recscale import __version__
from recscale.config import PrepareConfig
from recscale.data.sampling import positive_keys, sample_distinct_negatives
from recscale.data.raw import RawDataset
from recscale.data.splits import ORDER_COLUMNS, leave_last_out, random_split, strong_generalization, with_order
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_directory, check_output, json_marker, sha256_file

SCHEMA_VERSION = 2  # 2: protocol.tie_break recorded; version 1 datasets ordered ties by item id
READABLE_SCHEMAS = (1, 2)
PAPER_HELDOUT_USERS = 10_000
FEW_HELDOUT_USERS = 1_000  # below this, a vae split's metrics carry wide intervals: say so


def embedding_size(cardinality: int) -> int:
    """NVTabular's rule of thumb for an embedding's width."""
    return int(min(512, max(16, round(1.6 * cardinality ** 0.56))))


def _pair_key(frame: pl.DataFrame) -> pl.Series | None:
    """One int64 per (user, item), or None when the id ranges are too wide for that."""
    if frame.height == 0 or not (frame.schema["user"].is_integer() and frame.schema["item"].is_integer()):
        return None
    u_min, u_max, i_min, i_max = (int(frame[c].min() if op == "min" else frame[c].max())
                                  for c, op in (("user", "min"), ("user", "max"), ("item", "min"), ("item", "max")))
    width = i_max - i_min + 1
    if (u_max - u_min + 1) * width >= 2**63:
        return None
    return (frame["user"] - u_min) * width + (frame["item"] - i_min)


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


def latest_per_pair(frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (user, item): the latest by timestamp, then by the tie key (`with_order`; the
    file rule when the frame has none), then the later row. Only the rows of repeated pairs are
    sorted: sorting all 20M rows by three keys took 4.6 GB at ml-20m scale, this about 2 GB."""
    if "_tie" not in frame.columns:
        frame = with_order(frame, "file", 0)
    order = ("user", "item", "timestamp", "_tie", "_line")
    key = _pair_key(frame)
    if key is None:
        return frame.sort(*order).unique(["user", "item"], keep="last", maintain_order=True)
    repeated = key.is_duplicated()
    if not repeated.any():
        return frame
    latest = frame.filter(repeated).sort(*order).unique(["user", "item"], keep="last", maintain_order=True)
    return pl.concat([frame.filter(~repeated), latest])


def filter_interactions(frame: pl.DataFrame, cfg: PrepareConfig) -> pl.DataFrame:
    """Minimum rating; one row per (user, item), keeping the latest; minimum interactions per user.
    The result carries the order columns (`with_order`) for the split."""
    if "_tie" not in frame.columns:
        frame = with_order(frame, cfg.tie_break, cfg.seed)
    if cfg.effective_min_rating is not None:
        frame = frame.filter(pl.col("rating") >= cfg.effective_min_rating)
    frame = latest_per_pair(frame)
    if cfg.effective_min_user_interactions > 1:
        frame = frame.filter(pl.len().over("user") >= cfg.effective_min_user_interactions)
    if frame.height == 0:
        raise RecscaleError(f"no interactions left after filtering (min_rating={cfg.effective_min_rating}, "
                            f"min_user_interactions={cfg.effective_min_user_interactions})")
    return frame


def _id_map(ids: np.ndarray, name: str, names: dict[str, pl.Series] | None = None) -> pl.DataFrame:
    """Contiguous ids 0..n-1 for `ids` in the given order, with the original ids beside them:
    `ids` themselves, or their text for columns that had text ids (`names`, from encode_text_ids).
    `_key` keeps `ids` for joining with the interactions; it is not written."""
    text = (names or {}).get(name)
    original = text.gather(ids) if text is not None else ids
    return pl.DataFrame({name: np.arange(ids.size, dtype=np.int32), "_key": ids, "original_id": original})


def sorted_id_maps(frame: pl.DataFrame, names: dict[str, pl.Series] | None = None
                   ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """User and item maps over every id in `frame`, in sorted order of the original ids."""
    return tuple(_id_map(np.sort(frame[c].unique().to_numpy()), c, names) for c in ("user", "item"))


is_prepared = json_marker("meta.json", "schema_version", "protocol", "files", "counts")


def refuse_existing(out: Path, overwrite: bool, inputs=()) -> None:
    """Fail before any work, not after it (atomic_directory checks again when writing): an output
    that is (or contains) an input, or that is not a prepared dataset, is never replaced."""
    check_output(out, "prepared dataset", is_prepared, overwrite, inputs)


def _encode(frame: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame) -> pl.DataFrame:
    """Replace ids by contiguous ones (rows whose ids are not in the maps are dropped). The maps'
    `_key` column holds the ids as `frame` has them (the numbers of text ids)."""
    return (frame.join(users.select(pl.col("user").alias("_u"), pl.col("_key")), left_on="user", right_on="_key")
                 .join(items.select(pl.col("item").alias("_i"), pl.col("_key")), left_on="item", right_on="_key")
                 .select(pl.col("_u").alias("user"), pl.col("_i").alias("item"),
                         *[c for c in frame.columns if c not in ("user", "item", *ORDER_COLUMNS)])
                 .sort("user", "item"))


def _heldout_users(cfg: PrepareConfig, n_users: int) -> int:
    if cfg.heldout_users is None:
        return max(1, min(PAPER_HELDOUT_USERS, n_users // 10))
    if 2 * cfg.heldout_users >= n_users:
        raise RecscaleError(f"--heldout-users: {cfg.heldout_users} validation + {cfg.heldout_users} test "
                            f"users leave no training users out of {n_users}")
    return cfg.heldout_users


def _item_table(items: pl.DataFrame, raw_items: pl.DataFrame | None) -> tuple[pl.DataFrame, list[str]]:
    """The item id map with titles and genre ids; returns it and the genre vocabulary."""
    items = items.drop("_key")
    if raw_items is None:
        return items, []
    raw_items = raw_items.rename({"item": "original_id"})
    if raw_items.schema["original_id"] != items.schema["original_id"]:  # text ids in one of the files
        raw_items = raw_items.with_columns(pl.col("original_id").cast(pl.Utf8))
        items = items.with_columns(pl.col("original_id").cast(pl.Utf8))
    table = items.join(raw_items, on="original_id", how="left", maintain_order="left")
    vocab = sorted(table["genres"].explode().drop_nulls().unique().to_list())
    lookup = {g: i for i, g in enumerate(vocab)}
    table = table.with_columns(
        pl.col("title").fill_null(""),
        pl.col("genres").fill_null([]).list.eval(pl.element().replace_strict(lookup, return_dtype=pl.Int32)),
    )
    return table, vocab


def split(frame: pl.DataFrame, cfg: PrepareConfig, names: dict[str, pl.Series] | None = None
          ) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame, dict]:
    """Split by protocol and encode ids. Returns encoded parts, user map, item map, and the protocol
    parameters actually used."""
    params: dict = {"seed": cfg.seed, "min_rating": cfg.effective_min_rating,
                    "min_user_interactions": cfg.effective_min_user_interactions, "tie_break": cfg.tie_break}
    if cfg.protocol == "ncf":
        parts = leave_last_out(frame, 2 if cfg.valid else 1)
        users, items = sorted_id_maps(frame, names)
        params |= {"valid": cfg.valid, "test_negatives": cfg.test_negatives}
    elif cfg.protocol == "vae":
        n_heldout = _heldout_users(cfg, frame["user"].n_unique())
        parts, groups = strong_generalization(frame, n_heldout, cfg.holdout_fraction, cfg.seed)
        order = np.concatenate([np.sort(groups[g]) for g in ("train", "valid", "test")])
        users = _id_map(order, "user", names).with_columns(
            pl.Series("group", np.repeat(["train", "valid", "test"], [groups[g].size for g in ("train", "valid", "test")])))
        items = _id_map(np.sort(parts["train"]["item"].unique().to_numpy()), "item", names)
        params |= {"heldout_users": n_heldout, "holdout_fraction": cfg.holdout_fraction}
    else:
        parts = random_split(frame, cfg.ratios, cfg.seed)
        users, items = sorted_id_maps(frame, names)
        params |= {"ratios": list(cfg.ratios)}
    encoded = {name: _encode(part, users, items) for name, part in parts.items()}
    return encoded, users, items, params


def sample_eval_negatives(parts: dict[str, pl.DataFrame], n_items: int, n: int, seed: int) -> dict[str, pl.DataFrame]:
    """For each NCF evaluation split, `n` distinct items per user that are none of its positives
    in any split, drawn with a generator seeded by `seed` (validation and test draw in turn)."""
    everything = pl.concat([p.select("user", "item") for p in parts.values()])
    keys = positive_keys(torch.from_numpy(everything["user"].to_numpy(writable=True)),
                         torch.from_numpy(everything["item"].to_numpy(writable=True)), n_items)
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in ("valid", "test"):
        if name not in parts:
            continue
        users = torch.from_numpy(parts[name]["user"].to_numpy().astype(np.int64))
        negatives = sample_distinct_negatives(keys, users, n_items, n, generator)
        out[f"{name}_negatives"] = pl.DataFrame({
            "user": users.repeat_interleave(n).numpy().astype(np.int32),
            "item": negatives.reshape(-1).numpy().astype(np.int32)})
    return out


def _feature_meta(n: int, **extra) -> dict:
    return {"cardinality": n, "embedding_dim": embedding_size(n), **extra}


def check_finite(frame: pl.DataFrame, where: str) -> None:
    """Ratings must be finite numbers (the readers check files; this guards frames given directly)."""
    bad = frame.filter(~pl.col("rating").is_finite() | pl.col("rating").is_null()).height if frame.height else 0
    if bad:
        raise RecscaleError(f"{where}: {bad} rating(s) are NaN, infinite or missing")


def dataset_notes(meta: dict) -> list[str]:
    """What a user should know about a prepared dataset before trusting its metrics."""
    notes = []
    counts = meta["counts"]
    if meta["protocol"]["name"] == "vae" and counts.get("test_users", FEW_HELDOUT_USERS) < FEW_HELDOUT_USERS:
        notes.append(f"only {counts['test_users']} validation and {counts['test_users']} test users are held out "
                     f"(10% of the users at most, by default): their metrics carry wide 95% intervals; "
                     f"--heldout-users N holds out more")
    return notes


def prepare(raw: RawDataset, cfg: PrepareConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Write the prepared dataset for `raw` under `cfg` to `out`; return its meta.json content."""
    out = Path(out)
    refuse_existing(out, overwrite, raw.files)
    check_finite(raw.interactions, raw.name)
    frames, names = encode_text_ids({"interactions": raw.interactions})
    frame = filter_interactions(frames["interactions"], cfg)
    parts, users, items, params = split(frame, cfg, names)
    return write_prepared(raw, cfg.protocol, parts, users, items, params, out, overwrite,
                          cfg.test_negatives, cfg.seed)


def interaction_parts(names) -> list[str]:
    """The parts that hold interactions (not the sampled negatives)."""
    return [name for name in names if not name.endswith("_negatives")]


def dataset_meta(name: str, files: tuple[Path, ...], protocol: str, params: dict, n_users: int, n_items: int,
                 part_counts: dict[str, int], vocab: list[str], rating_min: float, rating_max: float,
                 explicit: bool, group_counts: dict[str, int] | None = None) -> dict:
    """meta.json's content (without the file checksums and indexes, added when the files exist)."""
    features = {"user": _feature_meta(n_users), "item": _feature_meta(n_items)}
    if vocab:
        features["genres"] = _feature_meta(len(vocab), multi_hot=True, vocabulary=vocab)
    interactions = sum(n for part, n in part_counts.items() if part in interaction_parts(part_counts))
    meta = {
        "schema_version": SCHEMA_VERSION,
        "recscale_version": __version__,
        "source": {"dataset": name, "files": {p.name: sha256_file(p) for p in files}},
        "protocol": {"name": protocol, **params},
        "counts": {"users": n_users, "items": n_items, "interactions": int(interactions), **part_counts},
        "files": {part: f"{part}.parquet" for part in part_counts} | {"users": "users.parquet", "items": "items.parquet"},
        "features": features,
        "rating": {"min": float(rating_min), "max": float(rating_max), "explicit": bool(explicit)},
    }
    if group_counts:
        meta["counts"] |= {f"{g}_users": n for g, n in group_counts.items()}
    return meta


def finish_prepared(tmp: Path, meta: dict) -> None:
    """Per-user CSR indexes of the interaction parts (data/csr.py), the checksum of every file, and
    meta.json, in the directory about to be renamed into place."""
    from recscale.data.csr import write_csr
    meta["index"] = {part: write_csr(tmp / f"{part}.parquet", tmp, part, meta["counts"]["users"])
                     for part in interaction_parts(meta["files"]) if part not in ("users", "items")}
    # the content of every file, so that a run can tell its dataset from another one in its place
    meta["sha256"] = {name: sha256_file(tmp / file) for name, file in meta["files"].items()}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2, allow_nan=False) + "\n")


def write_prepared(raw: RawDataset, protocol: str, parts: dict[str, pl.DataFrame], users: pl.DataFrame,
                   items: pl.DataFrame, params: dict, out: Path, overwrite: bool, test_negatives: int = 100,
                   seed: int = 0) -> dict:
    """Sample the NCF evaluation negatives (unless `parts` brings its own `*_negatives`), build the
    item table and meta.json, and write it all atomically."""
    if parts["train"].height == 0:
        raise RecscaleError("no training interactions left after the split")
    n_users, n_items = users.height, items.height
    if protocol == "ncf" and "test_negatives" not in parts:
        parts |= sample_eval_negatives(parts, n_items, test_negatives, seed)
    item_table, vocab = _item_table(items, raw.items)
    ratings = pl.concat([parts[name].select("rating") for name in interaction_parts(parts)])["rating"]
    groups = ({g: int((users["group"] == g).sum()) for g in ("train", "valid", "test")}
              if protocol == "vae" else None)
    meta = dataset_meta(raw.name, raw.files, protocol, params, n_users, n_items,
                        {name: int(part.height) for name, part in parts.items()}, vocab,
                        ratings.min(), ratings.max(), ratings.n_unique() > 1, groups)
    with atomic_directory(out, overwrite=overwrite) as tmp:
        try:
            for name, part in parts.items():
                part.write_parquet(tmp / f"{name}.parquet", statistics=True)
            users.drop("_key").write_parquet(tmp / "users.parquet")
            item_table.write_parquet(tmp / "items.parquet")
        except pl.exceptions.PolarsError as exc:  # Polars reports a full disk in its own exception types
            raise OSError(str(exc).splitlines()[0]) from exc
        finish_prepared(tmp, meta)
    return meta

"""Writing a prepared directory: the item table with its genre vocabulary, meta.json, the CSR
indexes and checksums, all in a temporary directory renamed into place.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from recscale._version import __version__
from recscale.data.dataset.schema import SCHEMA_VERSION, interaction_parts, is_prepared
from recscale.data.ingest.raw import RawDataset
from recscale.data.prepare.negatives import sample_eval_negatives
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_directory, check_output, sha256_file


def embedding_size(cardinality: int) -> int:
    """NVTabular's rule of thumb for an embedding's width."""
    return int(min(512, max(16, round(1.6 * cardinality ** 0.56))))


def refuse_existing(out: Path, overwrite: bool, inputs=()) -> None:
    """Fail before any work, not after it (atomic_directory checks again when writing): an output
    that is (or contains) an input, or that is not a prepared dataset, is never replaced."""
    check_output(out, "prepared dataset", is_prepared, overwrite, inputs)


def item_table(items: pl.DataFrame, raw_items: pl.DataFrame | None, known_genres: list[str] = ()
               ) -> tuple[pl.DataFrame, list[str]]:
    """The item id map with titles and genre ids; returns it and the genre vocabulary: the
    `known_genres` (a parent's, under --extend) keep their numbers, the others follow sorted."""
    items = items.drop("_key")
    if raw_items is None:
        return items, []
    raw_items = raw_items.rename({"item": "original_id"})
    if raw_items.schema["original_id"] != items.schema["original_id"]:  # text ids in one of the files
        raw_items = raw_items.with_columns(pl.col("original_id").cast(pl.Utf8))
        items = items.with_columns(pl.col("original_id").cast(pl.Utf8))
    table = items.join(raw_items, on="original_id", how="left", maintain_order="left")
    seen = set(table["genres"].explode().drop_nulls().unique().to_list())
    vocab = [*known_genres, *sorted(seen - set(known_genres))]
    lookup = {g: i for i, g in enumerate(vocab)}
    table = table.with_columns(
        pl.col("title").fill_null(""),
        pl.col("genres").fill_null([]).list.eval(pl.element().replace_strict(lookup, return_dtype=pl.Int32)),
    )
    return table, vocab


def _feature_meta(n: int, **extra) -> dict:
    return {"cardinality": n, "embedding_dim": embedding_size(n), **extra}


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
    """Per-user CSR indexes of the interaction parts (data/dataset/csr.py), the checksum of every file, and
    meta.json, in the directory about to be renamed into place."""
    from recscale.data.dataset.csr import write_csr
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
    table, vocab = item_table(items, raw.items, params.get("parent", {}).get("genres", []))
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
            table.write_parquet(tmp / "items.parquet")
        except pl.exceptions.PolarsError as exc:  # Polars reports a full disk in its own exception types
            raise OSError(str(exc).splitlines()[0]) from exc
        finish_prepared(tmp, meta)
    return meta

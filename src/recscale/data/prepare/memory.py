"""The in-memory engine of `recscale prepare`: raw interactions -> a prepared dataset directory.

Steps: filter (minimum rating, one row per (user, item) keeping the latest, minimum interactions per
user), split by protocol, encode ids as contiguous integers, sample the NCF evaluation negatives,
encode the genre vocabulary, then write everything into a temporary directory renamed into place.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.raw import RawDataset
from recscale.data.prepare.filters import check_finite, filter_interactions
from recscale.data.prepare.ids import encode_ids, encode_text_ids, extend_map, id_map, parent_maps, sorted_id_maps
from recscale.data.prepare.output import refuse_existing, write_prepared
from recscale.data.prepare.protocols import protocol_params, split_users, strong_generalization
from recscale.data.prepare.temporal import Cold, cutoffs, split_by_time


def split(frame: pl.DataFrame, cfg: PrepareConfig, names: dict[str, pl.Series] | None = None
          ) -> tuple[dict[str, pl.DataFrame], pl.DataFrame, pl.DataFrame, dict]:
    """Split by protocol and encode ids. Returns encoded parts, user map, item map, and the protocol
    parameters actually used."""
    params = protocol_params(cfg, frame["user"].n_unique())
    if cfg.protocol == "vae":
        parts, groups = strong_generalization(frame, params["heldout_users"], cfg.holdout_fraction, cfg.seed)
        order = np.concatenate([np.sort(groups[g]) for g in ("train", "valid", "test")])
        users = id_map(order, "user", names).with_columns(
            pl.Series("group", np.repeat(["train", "valid", "test"], [groups[g].size for g in ("train", "valid", "test")])))
        items = id_map(np.sort(parts["train"]["item"].unique().to_numpy()), "item", names)
    elif cfg.protocol == "temporal":
        valid_cut, cut = cutoffs(cfg, frame.lazy())
        parts = split_by_time(frame, valid_cut, cut, cfg.valid)
        train_items = parts["train"]["item"].unique()
        cold = Cold()
        parts = cold.keep_known_items(parts, train_items)
        params |= {"valid_cutoff": valid_cut, "cutoff": cut, "cold": cold.report()}
        users, _ = sorted_id_maps(frame, names)
        items = id_map(np.sort(train_items.to_numpy()), "item", names)
    else:
        parts = split_users(frame, cfg)
        users, items = sorted_id_maps(frame, names)
    parent = parent_maps(cfg)
    if parent is not None:  # yesterday's numbers kept, today's new users and items after them
        users, items = extend_map(users, "user", parent[0]), extend_map(items, "item", parent[1])
        params |= {"parent": parent[2]}
    encoded = {name: encode_ids(part, users, items) for name, part in parts.items()}
    return encoded, users, items, params


def prepare(raw: RawDataset, cfg: PrepareConfig, out: str | Path, overwrite: bool = False) -> dict:
    """Write the prepared dataset for `raw` under `cfg` to `out`; return its meta.json content."""
    out = Path(out)
    refuse_existing(out, overwrite, (*raw.files, *filter(None, [cfg.extend])))
    check_finite(raw.interactions, raw.name)
    frames, names = encode_text_ids({"interactions": raw.interactions})
    frame = filter_interactions(frames["interactions"], cfg)
    parts, users, items, params = split(frame, cfg, names)
    return write_prepared(raw, cfg.protocol, parts, users, items, params, out, overwrite,
                          cfg.test_negatives, cfg.seed)

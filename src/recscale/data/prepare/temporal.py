"""The `temporal` protocol: one global cut in time (RePlay's, RecTools' and Elliot's time split,
Microsoft Recommenders' chronological split). Interactions before the validation cut train, those
from it to the cut validate, those at or after the cut test. Both engines resolve the cuts with
`cutoffs` over the filtered log and split with `split_by_time`; `Cold` counts what the cut leaves
the model nothing to go on for, so that it is reported, never silently dropped:

- items first seen after the training window cannot be scored by any model: their interactions
  leave the validation and test targets (the catalog is what training saw), counted here;
- users with no training interaction are kept: history models fold them in from what came
  before the split (the validation window, for the test); evaluation counts those no model can
  score (nothing before the split) and those the model cannot (pairwise models need training).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recscale.config.prepare import PrepareConfig, parse_cutoff
from recscale.errors import RecscaleError

TARGETS = ("valid", "test")


def _quantile(q: float, log: pl.LazyFrame) -> int:
    # the lowest timestamp at or above the quantile: that share of the log, or a little more, trains
    return int(log.select(pl.col("timestamp").quantile(q, interpolation="higher")).collect().item())


def _time_at(text: str, log: pl.LazyFrame) -> int:
    kind, value = parse_cutoff(text)
    return int(value) if kind == "time" else _quantile(value, log)


def cutoffs(cfg: PrepareConfig, log: pl.LazyFrame) -> tuple[int, int]:
    """(validation cut, test cut) in Unix seconds over the filtered log's `timestamp` column; equal
    without a validation window. Refused in one line when a part would be empty."""
    span = log.select(pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"),
                      pl.len().alias("rows")).collect().row(0, named=True)
    cut = _time_at(cfg.cutoff, log)
    if cut > span["last"]:
        raise RecscaleError(f"--cutoff {cfg.cutoff}: after the last interaction ({span['last']}): nothing to test")
    valid = cut
    if cfg.valid:
        if cfg.valid_cutoff is not None:
            valid = _time_at(cfg.valid_cutoff, log)
            if valid > cut:
                raise RecscaleError(f"--valid-cutoff {cfg.valid_cutoff}: after --cutoff {cfg.cutoff}")
        else:  # a validation window holding as large a share of the log as the test
            before = log.select((pl.col("timestamp") < cut).mean()).collect().item()
            if 2 * before - 1 <= 0:
                raise RecscaleError(f"--cutoff {cfg.cutoff}: the test holds {1 - before:.0%} of the log, so a "
                                    f"validation window as large does not fit before it; give --valid-cutoff "
                                    f"or --no-valid")
            valid = _quantile(2 * before - 1, log)
    if valid <= span["first"]:
        name = "--valid-cutoff" if cfg.valid else "--cutoff"
        raise RecscaleError(f"{name}: at or before the first interaction ({span['first']}): nothing to train on")
    return valid, cut


def split_by_time(frame: pl.DataFrame, valid_cut: int, cut: int, with_valid: bool) -> dict[str, pl.DataFrame]:
    """train: timestamp < valid_cut; valid: valid_cut <= timestamp < cut; test: timestamp >= cut."""
    t = pl.col("timestamp")
    parts = {"train": frame.filter(t < valid_cut)}
    if with_valid:
        parts["valid"] = frame.filter((t >= valid_cut) & (t < cut))
    return parts | {"test": frame.filter(t >= cut)}


class Cold:
    """What the cut leaves unscorable, accumulated over a whole log or bucket after bucket of whole
    users: per target part, its users without training interactions, those with nothing at all
    before the part, and the interactions (and distinct items) not seen in training."""

    def __init__(self):
        self.counts = {part: {"users": 0, "new_users": 0, "users_without_history": 0, "new_item_interactions": 0}
                       for part in TARGETS}
        self.new_items: dict[str, list[np.ndarray]] = {part: [] for part in TARGETS}

    def keep_known_items(self, parts: dict[str, pl.DataFrame], train_items: pl.Series) -> dict[str, pl.DataFrame]:
        """`parts` with the target rows of items unseen in training removed, and counted."""
        before = {"valid": ("train",), "test": ("train", "valid")}
        kept = dict(parts)
        trained = parts["train"]["user"].unique()
        for part in (p for p in TARGETS if p in parts):
            rows = parts[part]
            known = rows["item"].is_in(train_items.implode())
            counts = self.counts[part]
            users = rows["user"].unique()
            history = pl.concat([parts[p]["user"] for p in before[part] if p in parts]).unique()
            counts["users"] += users.len()
            counts["new_users"] += int((~users.is_in(trained.implode())).sum())
            counts["users_without_history"] += int((~users.is_in(history.implode())).sum())
            counts["new_item_interactions"] += int((~known).sum())
            self.new_items[part].append(rows.filter(~known)["item"].unique().to_numpy())
            kept[part] = rows.filter(known)
        return kept

    def report(self) -> dict:
        """meta.json's `cold` section."""
        return {part: {**counts, "new_items": int(np.unique(np.concatenate(self.new_items[part])).size)
                       if self.new_items[part] else 0}
                for part, counts in self.counts.items() if self.new_items[part]}

"""The split protocols of the reference systems, as pure functions of a frame and a seed.

Input frames carry the canonical columns `user, item, rating, timestamp` with one row per
(user, item) pair. Every random choice comes from a NumPy Generator seeded explicitly, applied to
rows in a canonical order (sorted by user, item), so the same seed always gives the same split.
"""

from __future__ import annotations

import numpy as np
import polars as pl


ORDER_COLUMNS = ("_line", "_tie")  # helper columns: the row's place in the raw input, the tie key


def with_order(frame: pl.DataFrame, tie_break: str, seed: int) -> pl.DataFrame:
    """Add `_line` (the row's position in the raw input: for text files the line order, for
    Parquet the row order) and `_tie`, the key that orders interactions with equal timestamps:

    - file: the later line is the later interaction (what a stable sort by time gives, RecBole's rule);
    - random: a seeded random order (drawn over the rows in a canonical order, so it does not
      depend on the input's row order);
    - item: the higher item id is later (recscale's rule before schema version 2)."""
    frame = frame.with_row_index("_line")
    if tie_break == "file":
        return frame.with_columns(pl.col("_line").alias("_tie"))
    if tie_break == "item":
        return frame.with_columns(pl.col("item").alias("_tie"))
    if tie_break == "random":
        order = frame.sort("user", "item", "timestamp", "_line")["_line"].to_numpy()
        tie = np.empty(frame.height)
        tie[order] = np.random.default_rng(seed).random(frame.height)
        return frame.with_columns(pl.Series("_tie", tie))
    raise ValueError(f"unknown tie rule {tie_break!r}")


def _random_key(frame: pl.DataFrame, seed: int) -> pl.DataFrame:
    frame = frame.sort("user", "item")
    rng = np.random.default_rng(seed)
    return frame.with_columns(pl.Series("_key", rng.random(frame.height)))


def _keep(frame: pl.DataFrame, column: str, values: np.ndarray) -> pl.DataFrame:
    """Rows whose `column` is among `values` (a semi join: linear time at any scale)."""
    return frame.join(pl.DataFrame({column: values}).cast({column: frame.schema[column]}), on=column,
                      how="semi", maintain_order="left")


def leave_last_out(frame: pl.DataFrame, n_holdout: int) -> dict[str, pl.DataFrame]:
    """NCF (He et al. 2017): each user's latest interaction is the test positive and, with
    `n_holdout == 2`, the next latest the validation positive. Ties in time are broken by the tie
    key `_tie` (see `with_order`). Users with no more than `n_holdout` interactions keep them all
    in training."""
    ranked = frame.sort("user", "timestamp", "_tie").with_columns(
        (pl.len().over("user") - pl.int_range(pl.len()).over("user") - 1).alias("_from_end"),
        pl.len().over("user").alias("_count"),
    )
    held = pl.col("_count") > n_holdout
    parts = {"train": ranked.filter(~held | (pl.col("_from_end") >= n_holdout)),
             "test": ranked.filter(held & (pl.col("_from_end") == 0))}
    if n_holdout == 2:
        parts["valid"] = ranked.filter(held & (pl.col("_from_end") == 1))
    return {name: part.drop("_from_end", "_count") for name, part in parts.items()}


def strong_generalization(frame: pl.DataFrame, n_heldout_users: int, holdout_fraction: float,
                          seed: int) -> tuple[dict[str, pl.DataFrame], dict[str, np.ndarray]]:
    """Mult-VAE (Liang et al. 2018): users are shuffled; `n_heldout_users` go to validation and as
    many to test; the rest train. Only items seen in training are kept. Each held-out user with at
    least 5 items has `int(holdout_fraction * n)` of them drawn at random as held-out targets; the
    rest (all of them for smaller users) are the fold-in input, as in dawenl/vae_cf.

    Returns the frames and the original user ids of each group, in their shuffled order."""
    rng = np.random.default_rng(seed)
    users = np.sort(frame["user"].unique().to_numpy())
    users = users[rng.permutation(users.size)]
    n_train = users.size - 2 * n_heldout_users
    groups = {"train": users[:n_train], "valid": users[n_train:n_train + n_heldout_users],
              "test": users[n_train + n_heldout_users:]}
    train = _keep(frame, "user", groups["train"])
    train_items = train["item"].unique().to_numpy()
    parts = {"train": train}
    for name in ("valid", "test"):
        held = _random_key(_keep(_keep(frame, "user", groups[name]), "item", train_items),
                           seed + (1 if name == "valid" else 2))
        held = held.with_columns(
            pl.col("_key").rank("ordinal").over("user").alias("_rank"),
            pl.len().over("user").alias("_count"),
        )
        n_target = (pl.col("_count") * holdout_fraction).floor()
        target = (pl.col("_count") >= 5) & (pl.col("_rank") <= n_target)
        parts[f"{name}_foldin"] = held.filter(~target).drop("_key", "_rank", "_count")
        parts[f"{name}_heldout"] = held.filter(target).drop("_key", "_rank", "_count")
    return parts, groups


def random_split(frame: pl.DataFrame, ratios: tuple[float, float, float], seed: int) -> dict[str, pl.DataFrame]:
    """Per user, a random `floor(valid * n)` interactions go to validation and `floor(test * n)` to
    test; the rest (at least one) train. Explicit ratings are kept."""
    _, valid_ratio, test_ratio = ratios
    ranked = _random_key(frame, seed).with_columns(
        pl.col("_key").rank("ordinal").over("user").alias("_rank"),
        pl.len().over("user").alias("_count"),
    )
    n_test = (pl.col("_count") * test_ratio).floor()
    n_valid = (pl.col("_count") * valid_ratio).floor()
    # Never leave a user without a training interaction.
    n_test = pl.min_horizontal(n_test, pl.col("_count") - 1)
    n_valid = pl.min_horizontal(n_valid, pl.col("_count") - 1 - n_test)
    is_test = pl.col("_rank") <= n_test
    is_valid = ~is_test & (pl.col("_rank") <= n_test + n_valid)
    drop = ("_key", "_rank", "_count")
    return {"train": ranked.filter(~is_test & ~is_valid).drop(*drop),
            "valid": ranked.filter(is_valid).drop(*drop),
            "test": ranked.filter(is_test).drop(*drop)}

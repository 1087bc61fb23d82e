"""The split protocols of the reference systems, as pure functions of a frame and a seed, and the
protocol branching both prepare engines share (`protocol_params`, `split_users`, `vae_parts`):
each engine applies them to a whole log (memory.py) or to buckets of whole users (stream.py).

Input frames carry the canonical columns `user, item, rating, timestamp` with one row per
(user, item) pair. Every random choice comes from a NumPy Generator seeded explicitly, applied to
rows in a canonical order (sorted by user, item), so the same seed always gives the same split.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from recscale.config.prepare import PrepareConfig
from recscale.errors import RecscaleError

ORDER_COLUMNS = ("_line", "_tie")  # helper columns: the row's place in the raw input, the tie key


def with_order(frame: pl.DataFrame, tie_break: str, seed: int, offset: int = 0) -> pl.DataFrame:
    """Add `_line` (the row's position in the raw input: for text files the line order, for
    Parquet the row order) and `_tie`, the key that orders interactions with equal timestamps:

    - file: the later line is the later interaction (what a stable sort by time gives, RecBole's rule);
    - random: a seeded random order (drawn over the rows in a canonical order, so it does not
      depend on the input's row order);
    - item: the higher item id is later (recscale's rule before schema version 2)."""
    if "_line" not in frame.columns:  # the streaming prepare brings the input's own line numbers
        frame = frame.with_row_index("_line")
    if tie_break == "file":
        return frame.with_columns(pl.col("_line").alias("_tie"))
    if tie_break == "item":
        return frame.with_columns(pl.col("item").alias("_tie"))
    if tie_break == "random":
        order = frame.with_row_index("_row").sort("user", "item", "timestamp", "_line")["_row"].to_numpy()
        tie = np.empty(frame.height)
        tie[order] = seeded_stream(seed, offset).random(frame.height)
        return frame.with_columns(pl.Series("_tie", tie))
    raise ValueError(f"unknown tie rule {tie_break!r}")


def seeded_stream(seed: int, offset: int = 0) -> np.random.Generator:
    """np.random.default_rng(seed), advanced by `offset` draws: a slice of a data set processed in
    pieces (the streaming prepare's buckets) gets exactly the numbers the whole would give it."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if offset:
        rng.bit_generator.advance(offset)
    return rng


def _random_key(frame: pl.DataFrame, seed: int, offset: int = 0) -> pl.DataFrame:
    """A uniform key per row, drawn over the rows in (user, item) order; `offset`: the number of
    rows (in that order) that come before this frame's in the whole data."""
    frame = frame.sort("user", "item")
    return frame.with_columns(pl.Series("_key", seeded_stream(seed, offset).random(frame.height)))


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


def leave_last_out_sequences(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """The `seq` protocol (SASRec, BERT4Rec, RecBole's leave-one-out): each user's interactions in
    time order (ties by `_tie`, as `leave_last_out`), the last the test target, the one before the
    validation target, the rest train. Every part keeps `position`, the interaction's place in
    the user's whole sequence (0 = first), so that the order survives the (user, item) sort of the
    written parts. Users need at least 3 interactions (the filter's `min_seq` sees to it)."""
    ranked = frame.sort("user", "timestamp", "_tie").with_columns(
        pl.int_range(pl.len(), dtype=pl.Int32).over("user").alias("position"),
        pl.len().over("user").alias("_count"),
    )
    from_end = pl.col("_count") - pl.col("position") - 1
    parts = {"train": ranked.filter(from_end >= 2), "valid": ranked.filter(from_end == 1),
             "test": ranked.filter(from_end == 0)}
    return {name: part.drop("_count") for name, part in parts.items()}


def vae_groups(users: np.ndarray, n_heldout_users: int, seed: int) -> dict[str, np.ndarray]:
    """Mult-VAE's user groups: the users (sorted) shuffled with the seed; `n_heldout_users` go to
    validation and as many to test, the rest train. Each group in its shuffled order."""
    users = users[np.random.default_rng(seed).permutation(users.size)]
    n_train = users.size - 2 * n_heldout_users
    return {"train": users[:n_train], "valid": users[n_train:n_train + n_heldout_users],
            "test": users[n_train + n_heldout_users:]}


def fold_in_split(held: pl.DataFrame, holdout_fraction: float, seed: int, offset: int = 0
                  ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(fold-in, held-out) rows of held-out users: each user with at least 5 items has
    `int(holdout_fraction * n)` of them drawn as held-out targets, the rest (all of them for smaller
    users) are the fold-in input, as in dawenl/vae_cf. `offset` as for `_random_key`."""
    held = _random_key(held, seed, offset).with_columns(
        pl.col("_key").rank("ordinal").over("user").alias("_rank"),
        pl.len().over("user").alias("_count"),
    )
    n_target = (pl.col("_count") * holdout_fraction).floor()
    target = (pl.col("_count") >= 5) & (pl.col("_rank") <= n_target)
    drop = ("_key", "_rank", "_count")
    return held.filter(~target).drop(*drop), held.filter(target).drop(*drop)


def vae_parts(frame: pl.DataFrame, groups: dict[str, np.ndarray], train_items: np.ndarray,
              holdout_fraction: float, seed: int, offsets: dict[str, int] | None = None) -> dict[str, pl.DataFrame]:
    """The Mult-VAE parts of `frame` (a whole log or a bucket of whole users) given the user groups:
    training users' rows; for the held-out users, the rows of items seen in training split into
    fold-in input and held-out targets. `offsets` counts the held-out rows of earlier buckets per
    group (updated here), so that bucket after bucket draws what one pass over the log would."""
    offsets = {"valid": 0, "test": 0} if offsets is None else offsets
    parts = {"train": _keep(frame, "user", groups["train"])}
    for name in ("valid", "test"):
        held = _keep(_keep(frame, "user", groups[name]), "item", train_items)
        parts[f"{name}_foldin"], parts[f"{name}_heldout"] = fold_in_split(
            held, holdout_fraction, seed + (1 if name == "valid" else 2), offsets[name])
        offsets[name] += held.height
    return parts


def strong_generalization(frame: pl.DataFrame, n_heldout_users: int, holdout_fraction: float,
                          seed: int) -> tuple[dict[str, pl.DataFrame], dict[str, np.ndarray]]:
    """Mult-VAE (Liang et al. 2018): users shuffled into training, validation and test groups
    (`vae_groups`); only items seen in training are kept for the held-out users, whose rows are
    split into fold-in input and held-out targets (`fold_in_split`).

    Returns the frames and the original user ids of each group, in their shuffled order."""
    groups = vae_groups(np.sort(frame["user"].unique().to_numpy()), n_heldout_users, seed)
    train_items = _keep(frame, "user", groups["train"])["item"].unique().to_numpy()
    return vae_parts(frame, groups, train_items, holdout_fraction, seed), groups


def random_split(frame: pl.DataFrame, ratios: tuple[float, float, float], seed: int,
                 offset: int = 0) -> dict[str, pl.DataFrame]:
    """Per user, a random `floor(valid * n)` interactions go to validation and `floor(test * n)` to
    test; the rest (at least one) train. Explicit ratings are kept. `offset` as for `_random_key`."""
    _, valid_ratio, test_ratio = ratios
    ranked = _random_key(frame, seed, offset).with_columns(
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


PAPER_HELDOUT_USERS = 10_000


def heldout_users(cfg: PrepareConfig, n_users: int) -> int:
    if cfg.heldout_users is None:
        return max(1, min(PAPER_HELDOUT_USERS, n_users // 10))
    if 2 * cfg.heldout_users >= n_users:
        raise RecscaleError(f"--heldout-users: {cfg.heldout_users} validation + {cfg.heldout_users} test "
                            f"users leave no training users out of {n_users}")
    return cfg.heldout_users


PART_ORDER = ("train", "valid", "test")


def protocol_params(cfg: PrepareConfig, n_users: int) -> dict:
    """meta.json's protocol parameters, the same from both engines (`n_users`: after filtering)."""
    params: dict = {"seed": cfg.seed, "min_rating": cfg.effective_min_rating,
                    "min_user_interactions": cfg.effective_min_user_interactions, "tie_break": cfg.tie_break}
    if cfg.protocol == "ncf":
        return params | {"valid": cfg.valid, "test_negatives": cfg.test_negatives}
    if cfg.protocol == "vae":
        return params | {"heldout_users": heldout_users(cfg, n_users), "holdout_fraction": cfg.holdout_fraction}
    if cfg.protocol == "seq":
        return params | {"min_seq": cfg.min_seq}
    if cfg.protocol == "temporal":  # the cuts themselves are added by the engine (temporal.cutoffs)
        return params | {"valid": cfg.valid, "cutoff_asked": cfg.cutoff, "valid_cutoff_asked": cfg.valid_cutoff}
    return params | {"ratios": list(cfg.ratios)}


def split_users(frame: pl.DataFrame, cfg: PrepareConfig, offset: int = 0) -> dict[str, pl.DataFrame]:
    """The per-user protocols (ncf, seq, random) on a whole log or a bucket of whole users (`offset`:
    rows of earlier buckets, as for `_random_key`)."""
    if cfg.protocol == "ncf":
        return leave_last_out(frame, 2 if cfg.valid else 1)
    if cfg.protocol == "seq":
        return leave_last_out_sequences(frame)
    return random_split(frame, cfg.ratios, cfg.seed, offset)

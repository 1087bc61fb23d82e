"""Synthetic interaction logs at any scale, in MovieLens' raw layout (ratings.csv, movies.csv).

Item popularity and user activity follow power laws (as in real logs: a few blockbusters, a few
very active users). Users and items belong to latent clusters; a user draws most interactions from
items of its own cluster (weighted by popularity), the rest from the whole catalogue. Every item's
genres include its cluster's genre. So popularity alone does well on the head, but a model that
discovers the clusters does better. Every draw is vectorized; 20M interactions take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from recscale.config.fields import SEED_RANGE, Checked, ConfigError, in_range, option
from recscale.data.ingest.raw import RawDataset
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file

FIRST_TIMESTAMP = 946_684_800   # 2000-01-01


LAST_TIMESTAMP = 1_577_836_800  # 2020-01-01


MAX_IN_MEMORY = 250_000_000  # interactions synthesized at once (about 40 bytes each while drawing)


MAX_IDS = 100_000_000         # users or items (per-id arrays of several floats each)


@dataclass(frozen=True)
class SynthSpec(Checked):
    users: int = option(10_000, "users", check=in_range(2, MAX_IDS + 1))
    items: int = option(2_000, "items", check=in_range(2, MAX_IDS + 1))
    interactions: int = option(500_000, "interactions", check=in_range(1, MAX_IN_MEMORY + 1))
    seed: int = option(0, "seed", check=SEED_RANGE)
    clusters: int = option(20, "latent user/item clusters", check=in_range(1, 10_001))
    in_cluster: float = 0.8        # fraction of a user's interactions drawn from its own cluster
    item_exponent: float = 1.0     # Zipf exponent of item popularity
    activity_exponent: float = 1.5  # Pareto exponent of user activity (smaller: heavier tail)
    min_per_user: int = 5          # so that leave-last-out keeps a training interaction per user

    def relations(self) -> None:
        if self.interactions < self.users * self.min_per_user:
            raise ConfigError("interactions", f"need at least {self.min_per_user} per user "
                              f"({self.users * self.min_per_user:,} for {self.users:,} users)")
        if self.interactions > self.users * self.items // 2:
            raise ConfigError("interactions", f"at most half of users x items ({self.users * self.items // 2:,})")
        if self.interactions > self.users * self.per_user_cap:
            raise ConfigError("interactions", f"at most {self.users * self.per_user_cap:,}: a user interacts with at "
                              f"most a fifth of the items ({self.per_user_cap})")

    @property
    def per_user_cap(self) -> int:
        return max(self.min_per_user, self.items // 5)

    def check(self) -> None:
        """Kept for callers that build a spec with dataclasses.replace; construction checks it all."""
        self.relations()


@dataclass(frozen=True)
class Synthetic:
    raw: RawDataset
    user_cluster: np.ndarray  # by user id (ids are 1..users)
    item_cluster: np.ndarray  # by item id (ids are 1..items)


def _activity(spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: min_per_user plus a Pareto-distributed share of the rest, each capped
    at a fifth of the catalogue, summing to `spec.interactions`."""
    cap = spec.per_user_cap  # the spec guarantees users x cap >= interactions, so the loop ends
    weights = rng.pareto(spec.activity_exponent, spec.users) + 1.0
    counts = np.full(spec.users, spec.min_per_user, dtype=np.int64)
    remaining = spec.interactions - counts.sum()
    while remaining > 0:
        room = cap - counts
        share = np.where(room > 0, weights, 0.0)
        extra = np.minimum(room, np.floor(remaining * share / share.sum()).astype(np.int64))
        if extra.sum() == 0:  # rounding left a few: hand them out one by one to users with room
            extra = np.zeros_like(counts)
            extra[np.flatnonzero(room > 0)[:remaining]] = 1
        counts += extra
        remaining = spec.interactions - counts.sum()
    return counts


def _draw(cdf: np.ndarray, members: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return members[np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), members.size - 1)]


def _draw_items(user_of: np.ndarray, user_cluster: np.ndarray, item_cluster: np.ndarray,
                popularity: np.ndarray, spec: SynthSpec, rng: np.random.Generator) -> np.ndarray:
    """One item per entry of `user_of`: from the user's cluster with probability in_cluster."""
    items = np.empty(user_of.size, dtype=np.int64)
    local = rng.random(user_of.size) < spec.in_cluster
    everything = np.arange(spec.items)
    items[~local] = _draw(np.cumsum(popularity), everything, int((~local).sum()), rng)
    clusters_of = user_cluster[user_of]
    for c in range(spec.clusters):
        where = np.flatnonzero(local & (clusters_of == c))
        members = np.flatnonzero(item_cluster == c)
        if members.size == 0:
            members = everything
        items[where] = _draw(np.cumsum(popularity[members]), members, where.size, rng)
    return items


def _distinct_sorted(keys: np.ndarray) -> np.ndarray:
    # Polars' multithreaded unique: np.unique took 10-20 s for 20M keys on the 2-core machine.
    return pl.Series(keys).unique().sort().to_numpy()


def _rank_in_user(keys: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """A random rank 0..k-1 of each key among its user's k keys."""
    frame = pl.DataFrame({"user": keys // n_items, "priority": rng.random(keys.size)})
    return frame.select(pl.col("priority").rank("ordinal").over("user") - 1).to_series().to_numpy()


def _distinct_pairs(wanted, user_cluster, item_cluster, popularity, spec, rng) -> np.ndarray:
    """Exactly `spec.interactions` distinct (user, item) keys, about wanted[u] of user u.

    Draw with replacement and drop repeats (heavy users hit popular items more than once); draw the
    shortfall again from the users that lack most, cluster-aware at first, then uniformly over the
    catalogue (which converges in a round or two); finally drop a random surplus, never below
    min_per_user for a user."""
    keys = np.empty(0, dtype=np.int64)
    for round_ in range(12):
        have = np.bincount(keys // spec.items, minlength=spec.users)
        lack = np.maximum(wanted - have, 0)
        if keys.size >= spec.interactions and (have >= spec.min_per_user).all():
            break
        extra = lack + (lack * 0.25 * (round_ > 0)).astype(np.int64)
        user_of = np.repeat(np.arange(spec.users), extra)
        if round_ < 2:
            items = _draw_items(user_of, user_cluster, item_cluster, popularity, spec, rng)
        else:
            items = rng.integers(0, spec.items, user_of.size)
        keys = _distinct_sorted(np.concatenate([keys, user_of * spec.items + items]))
    surplus = keys.size - spec.interactions
    if surplus > 0:
        droppable = np.flatnonzero(_rank_in_user(keys, spec.items, rng) >= spec.min_per_user)
        keys = np.delete(keys, rng.choice(droppable, surplus, replace=False))
    return keys


def synthesize(spec: SynthSpec) -> Synthetic:
    spec.check()
    rng = np.random.default_rng(spec.seed)
    popularity = 1.0 / np.arange(1, spec.items + 1) ** spec.item_exponent
    popularity = popularity[rng.permutation(spec.items)]  # popular items anywhere in the id range
    item_cluster = rng.integers(0, spec.clusters, spec.items)
    user_cluster = rng.integers(0, spec.clusters, spec.users)
    wanted = _activity(spec, rng)

    keys = _distinct_pairs(wanted, user_cluster, item_cluster, popularity, spec, rng)
    users, items = keys // spec.items, keys % spec.items
    same = user_cluster[users] == item_cluster[items]
    rating = np.clip(np.round(2 * (3.0 + same + rng.normal(0, 0.8, keys.size))) / 2, 0.5, 5.0)
    timestamp = rng.integers(FIRST_TIMESTAMP, LAST_TIMESTAMP, keys.size)
    interactions = pl.DataFrame({"user": users + 1, "item": items + 1, "rating": rating.astype(np.float32),
                                 "timestamp": timestamp}).sort("user", "timestamp")
    genre_names = [f"Genre{c:02d}" for c in range(spec.clusters)]
    second = rng.integers(0, spec.clusters, spec.items)
    genres = [[genre_names[a]] if a == b else [genre_names[a], genre_names[b]]
              for a, b in zip(item_cluster.tolist(), second.tolist())]
    item_table = pl.DataFrame({"item": np.arange(1, spec.items + 1), "title": [f"Item {i}" for i in range(1, spec.items + 1)],
                               "genres": genres})
    raw = RawDataset(f"synth-{spec.users}x{spec.items}-{spec.interactions}-s{spec.seed}", interactions, item_table, ())
    return Synthetic(raw, np.concatenate([[-1], user_cluster]), np.concatenate([[-1], item_cluster]))


def write_movielens_layout(raw: RawDataset, out_dir, overwrite: bool = False) -> None:
    """ratings.csv (userId,movieId,rating,timestamp) and movies.csv (movieId,title,genres) into
    `out_dir`, each written atomically; other files in `out_dir` are left alone, and existing
    ratings.csv/movies.csv are replaced only with `overwrite`."""
    out_dir = Path(out_dir)
    for name in ("ratings.csv", "movies.csv"):
        if (out_dir / name).exists() and not overwrite:
            raise RecscaleError(f"{out_dir / name}: already exists (pass --overwrite to replace it)")
    with atomic_file(out_dir / "ratings.csv") as tmp:
        raw.interactions.rename({"user": "userId", "item": "movieId"}).write_csv(tmp)
    with atomic_file(out_dir / "movies.csv") as tmp:
        raw.items.select(pl.col("item").alias("movieId"), "title", pl.col("genres").list.join("|")).write_csv(tmp)

"""Synthetic logs: exact size, distinct pairs, power laws, determinism, and clusters that a
personalized model can exploit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from recscale.data.ingest.synth import SynthSpec, synthesize
from recscale.errors import RecscaleError

SPEC = SynthSpec(users=2_000, items=1_000, interactions=40_000, seed=3, clusters=8)


@pytest.fixture(scope="module")
def synth():
    return synthesize(SPEC)


def test_exact_size_distinct_pairs_and_minimum_activity(synth):
    frame = synth.raw.interactions
    assert frame.height == SPEC.interactions
    assert frame.select("user", "item").unique().height == frame.height
    per_user = frame.group_by("user").len()["len"]
    assert per_user.len() == SPEC.users and per_user.min() >= SPEC.min_per_user
    assert frame["rating"].min() >= 0.5 and frame["rating"].max() <= 5.0
    assert synth.raw.items.height == SPEC.items


def test_power_law_popularity_and_activity(synth):
    frame = synth.raw.interactions
    items = np.sort(frame.group_by("item").len()["len"].to_numpy())[::-1]
    assert items[: SPEC.items // 10].sum() > 0.3 * frame.height  # the top 10% of items: > 30% of interactions
    users = frame.group_by("user").len()["len"].to_numpy()
    assert users.max() > 4 * np.median(users)


def test_same_seed_same_log_other_seed_other_log(synth):
    again = synthesize(SPEC).raw.interactions
    assert again.equals(synth.raw.interactions)
    other = synthesize(SynthSpec(**{**SPEC.__dict__, "seed": 4})).raw.interactions
    assert not other.equals(synth.raw.interactions)


def _hit_rate(scores: np.ndarray, seen: np.ndarray, held: np.ndarray, k: int = 10) -> float:
    scores = np.where(seen, -np.inf, scores)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == held[:, None]).any(axis=1).mean())


def test_a_model_that_knows_the_clusters_beats_popularity(synth):
    frame = synth.raw.interactions.with_columns(pl.col("user") - 1, pl.col("item") - 1)
    rng = np.random.default_rng(0)
    held_rows = frame.with_row_index().group_by("user").agg(pl.col("index").sample(1, seed=0)).explode("index")
    held = frame[held_rows.sort("user")["index"].to_numpy()]
    train = frame.join(held, on=["user", "item"], how="anti")
    seen = np.zeros((SPEC.users, SPEC.items), dtype=bool)
    seen[train["user"].to_numpy(), train["item"].to_numpy()] = True
    popularity = seen.sum(axis=0).astype(float) + rng.random(SPEC.items) * 1e-3
    same = synth.user_cluster[1:, None] == synth.item_cluster[None, 1:]
    popular = _hit_rate(np.broadcast_to(popularity, seen.shape), seen, held["item"].to_numpy())
    clustered = _hit_rate(popularity * (1 + 10 * same), seen, held["item"].to_numpy())
    assert clustered > popular + 0.1, (clustered, popular)


def test_impossible_sizes_are_refused():
    with pytest.raises(RecscaleError, match="interactions: need at least 5 per user"):
        synthesize(SynthSpec(users=100, items=50, interactions=100))
    with pytest.raises(RecscaleError, match="at most half"):
        synthesize(SynthSpec(users=10, items=10, interactions=60))


def test_datasets_synth_writes_the_movielens_layout(tmp_path, capsys):
    from recscale.cli import main
    from recscale.data.ingest.formats import read_format

    code = main(["datasets", "synth", "--users", "300", "--items", "200", "--interactions", "6000", "--seed", "5",
                 "--out", str(tmp_path / "raw")])
    assert code == 0 and "wrote 6,000 interactions" in capsys.readouterr().out
    raw = read_format("movielens-csv", tmp_path / "raw")
    expected = synthesize(SynthSpec(300, 200, 6000, seed=5, clusters=20)).raw
    assert raw.interactions.sort("user", "item").equals(expected.interactions.sort("user", "item"))
    assert raw.items["genres"].to_list() == expected.items["genres"].to_list()

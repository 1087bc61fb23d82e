"""Split invariants, determinism, id maps, meta counts, and atomic writes of `prepare`."""

import json

import numpy as np
import polars as pl
import pytest

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.prepare import filters
from recscale.data.prepare.memory import prepare
from recscale.data.prepare.output import embedding_size
from recscale.errors import RecscaleError
from tests.helpers import synthetic_raw


def _pairs(frame: pl.DataFrame) -> set[tuple[int, int]]:
    return set(zip(frame["user"].to_list(), frame["item"].to_list()))


def test_ncf_holds_out_each_users_latest_interactions(prepared):
    data = prepared("ncf")
    train, valid, test = data.table("train"), data.table("valid"), data.table("test")
    assert not _pairs(train) & _pairs(test) and not _pairs(train) & _pairs(valid)
    assert test["user"].n_unique() == test.height == data.n_users  # every user has >= 20 ratings
    latest_train = train.group_by("user").agg(pl.col("timestamp").max())
    joined = test.join(valid, on="user", suffix="_v").join(latest_train, on="user", suffix="_t")
    assert (joined["timestamp"] >= joined["timestamp_v"]).all()
    assert (joined["timestamp_v"] >= joined["timestamp_t"]).all()


def test_ncf_negatives_are_distinct_and_never_positives(prepared):
    data = prepared("ncf")
    positives = _pairs(data.table("train")) | _pairs(data.table("valid")) | _pairs(data.table("test"))
    for split in ("valid", "test"):
        users, items = data.negatives(split)
        assert items.shape == (data.n_users, 100)
        assert all(len(set(row)) == 100 for row in items.tolist())
        assert not {(u, i) for u, row in zip(users.tolist(), items.tolist()) for i in row} & positives
        assert users.tolist() == data.table(split)["user"].to_list()


def test_vae_user_groups_partition_users_and_items_come_from_training(prepared):
    data = prepared("vae")
    groups = {g: set(data.group_users(g).tolist()) for g in ("train", "valid", "test")}
    assert groups["train"].isdisjoint(groups["valid"]) and groups["valid"].isdisjoint(groups["test"])
    assert groups["train"].isdisjoint(groups["test"])
    assert set().union(*groups.values()) == set(range(data.n_users))
    assert set(data.table("train")["user"].to_list()) == groups["train"]
    for g in ("valid", "test"):
        assert set(data.table(f"{g}_foldin")["user"].to_list()) <= groups[g]
        assert set(data.table(f"{g}_heldout")["user"].to_list()) <= groups[g]
    assert set(data.table("train")["item"].unique().to_list()) == set(range(data.n_items))
    assert data.meta["protocol"]["heldout_users"] == len(groups["valid"]) == len(groups["test"]) == 65
    assert (data.table("train")["rating"] >= 4.0).all()


def test_vae_heldout_is_a_fifth_of_each_users_items(prepared):
    data = prepared("vae")
    for g in ("valid", "test"):
        fold = data.table(f"{g}_foldin").group_by("user").len()
        held = data.table(f"{g}_heldout").group_by("user").len()
        both = fold.join(held, on="user", how="left", suffix="_h").fill_null(0)
        total = both["len"] + both["len_h"]
        expected = np.where(total.to_numpy() >= 5, np.floor(0.2 * total.to_numpy()), 0)
        assert both["len_h"].to_list() == expected.astype(int).tolist()
        assert not _pairs(data.table(f"{g}_foldin")) & _pairs(data.table(f"{g}_heldout"))


def test_random_split_ratios_and_explicit_ratings(prepared):
    data = prepared("random")
    parts = {p: data.table(p) for p in ("train", "valid", "test")}
    total = sum(p.height for p in parts.values())
    assert total == data.meta["counts"]["interactions"]
    assert abs(parts["test"].height / total - 0.1) < 0.02 and abs(parts["valid"].height / total - 0.1) < 0.02
    assert parts["train"]["rating"].n_unique() > 2
    assert not _pairs(parts["train"]) & _pairs(parts["test"])


@pytest.mark.parametrize("protocol", ["ncf", "vae", "random"])
def test_meta_counts_agree_with_the_files(prepared, protocol):
    data = prepared(protocol)
    for part in data.meta["files"]:
        if part not in ("users", "items"):
            assert data.table(part).height == data.meta["counts"][part], part
    assert data.table("users").height == data.n_users
    assert data.table("items").height == data.n_items
    assert data.meta["features"]["item"]["embedding_dim"] == embedding_size(data.n_items)
    assert data.meta["features"]["genres"]["multi_hot"] is True
    assert len(data.meta["source"]["files"]["ratings.parquet"]) == 64


def test_id_maps_round_trip_to_the_original_ratings(prepared, movielens):
    data = prepared("ncf")
    users, items = data.original_user_ids(), data.original_item_ids()
    train = data.table("train")
    decoded = pl.DataFrame({"user": users[train["user"].to_numpy()], "item": items[train["item"].to_numpy()],
                            "rating": train["rating"]})
    original = movielens.interactions.select("user", "item", "rating")
    assert decoded.join(original, on=["user", "item", "rating"], how="anti").height == 0
    assert np.all(np.diff(users) > 0) and np.all(np.diff(items) > 0)


def test_genres_are_encoded_as_vocabulary_ids(prepared, movielens):
    data = prepared("ncf")
    vocab = data.meta["features"]["genres"]["vocabulary"]
    items = data.table("items")
    toy_story = items.filter(pl.col("original_id") == 1)["genres"].to_list()[0]
    assert [vocab[g] for g in toy_story] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    values, offsets = data.item_genres()
    assert offsets.numel() == data.n_items and values.numel() == items["genres"].list.len().sum()


@pytest.mark.parametrize("protocol", ["ncf", "vae", "random"])
def test_same_seed_same_files_other_seed_other_split(tmp_path, protocol):
    raw = synthetic_raw()
    metas = [prepare(raw, PrepareConfig(protocol=protocol, seed=s, test_negatives=5, heldout_users=5, min_rating=1),
                     tmp_path / name) for name, s in (("a", 3), ("b", 3), ("c", 4))]
    assert metas[0] == metas[1]
    for part in metas[0]["files"].values():
        assert pl.read_parquet(tmp_path / "a" / part).equals(pl.read_parquet(tmp_path / "b" / part))
    differs = [not pl.read_parquet(tmp_path / "a" / p).equals(pl.read_parquet(tmp_path / "c" / p))
               for p in metas[0]["files"].values()]
    assert any(differs)


def test_failed_prepare_leaves_nothing_behind(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", boom)
    with pytest.raises(RuntimeError):
        prepare(synthetic_raw(), PrepareConfig(protocol="ncf", test_negatives=5), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    raw, cfg = synthetic_raw(), PrepareConfig(protocol="random")
    prepare(raw, cfg, tmp_path / "out")
    with pytest.raises(RecscaleError, match="already exists"):
        prepare(raw, cfg, tmp_path / "out")
    prepare(raw, PrepareConfig(protocol="ncf", test_negatives=5), tmp_path / "out", overwrite=True)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["protocol"]["name"] == "ncf"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_empty_after_filtering_and_too_many_heldout_users(tmp_path):
    raw = synthetic_raw()
    with pytest.raises(RecscaleError, match="no interactions left after filtering"):
        prepare(raw, PrepareConfig(protocol="ncf", min_rating=9), tmp_path / "a")
    with pytest.raises(RecscaleError, match="--heldout-users: 20 validation"):
        prepare(raw, PrepareConfig(protocol="vae", heldout_users=20), tmp_path / "b")
    with pytest.raises(RecscaleError, match="--test-negatives: 45 asked, but a user has only 40 of the 60 items left"):
        prepare(raw, PrepareConfig(protocol="ncf", test_negatives=45), tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_duplicate_pairs_keep_the_latest(tmp_path):
    raw = synthetic_raw()
    dup = raw.interactions.head(1).with_columns(pl.col("timestamp") + 10_000, pl.lit(5.0, pl.Float32).alias("rating"))
    raw = type(raw)(raw.name, pl.concat([raw.interactions, dup]), None, ())
    frame = filters.filter_interactions(raw.interactions, PrepareConfig(protocol="random"))
    row = frame.filter((pl.col("user") == dup["user"][0]) & (pl.col("item") == dup["item"][0]))
    assert row.height == 1 and row["rating"][0] == 5.0


def test_schema_version_is_checked(tmp_path):
    prepare(synthetic_raw(), PrepareConfig(protocol="random"), tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    meta["schema_version"] = 99
    (tmp_path / "d" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecscaleError, match="schema version 99"):
        PreparedDataset(tmp_path / "d")

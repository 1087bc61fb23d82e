"""The `temporal` protocol (data/prepare/temporal.py): one global cut in time; the users and items
the cut leaves without history are counted and reported, never silently dropped, and evaluation
says how many users a model could not score."""

from __future__ import annotations

import datetime
import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from recscale.config.fields import ConfigError
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.evaluation.protocols import evaluate
from recscale.models.base import DataShape
from recscale.models.ncf import GMF, GMFConfig
from recscale.models.popularity import Popularity
from recscale.training.run import sparse_tensor


@pytest.fixture(scope="module")
def temporal(movielens, tmp_path_factory):
    out = tmp_path_factory.mktemp("temporal") / "data"
    prepare(movielens, PrepareConfig(protocol="temporal"), out)
    return PreparedDataset(out)


def test_the_cut_splits_by_time_and_every_interaction_is_accounted_for(temporal, movielens):
    params = temporal.meta["protocol"]
    parts = {p: temporal.table(p) for p in ("train", "valid", "test")}
    assert parts["train"]["timestamp"].max() < params["valid_cutoff"] <= parts["valid"]["timestamp"].min()
    assert parts["valid"]["timestamp"].max() < params["cutoff"] <= parts["test"]["timestamp"].min()
    stamps = movielens.interactions["timestamp"]
    assert params["cutoff"] == stamps.quantile(0.9, "higher")
    cold = params["cold"]
    dropped = cold["valid"]["new_item_interactions"] + cold["test"]["new_item_interactions"]
    assert sum(p.height for p in parts.values()) + dropped == movielens.interactions.height
    assert dropped > 0 and cold["test"]["new_items"] > 0  # the embedded log has items first seen late
    # the catalog is what training saw: every target item has a training interaction
    trained = set(parts["train"]["item"].to_list())
    assert trained == set(range(temporal.n_items))
    # users first seen after the training window are kept, and counted
    train_users = set(parts["train"]["user"].to_list())
    test_users = set(parts["test"]["user"].to_list())
    raw_test_users = movielens.interactions.filter(pl.col("timestamp") >= params["cutoff"])["user"].n_unique()
    assert cold["test"]["users"] == raw_test_users
    assert len(test_users - train_users) <= cold["test"]["new_users"] <= raw_test_users


def test_a_date_a_timestamp_and_a_quantile_name_the_same_cut(movielens, tmp_path):
    cut = int(movielens.interactions["timestamp"].quantile(0.8, "higher"))
    day = datetime.datetime.fromtimestamp(cut, datetime.timezone.utc).isoformat()
    metas = [prepare(movielens, PrepareConfig(protocol="temporal", cutoff=c, valid=False), tmp_path / name)
             for name, c in (("q", "0.8"), ("t", str(cut)), ("d", day))]
    assert {m["protocol"]["cutoff"] for m in metas} == {cut}
    assert metas[0]["counts"] == metas[1]["counts"] == metas[2]["counts"]
    assert "valid" not in metas[0]["files"]


def test_cuts_that_leave_a_part_empty_are_refused_in_one_line(movielens, tmp_path):
    last = int(movielens.interactions["timestamp"].max())
    first = int(movielens.interactions["timestamp"].min())
    for options, message in (({"cutoff": str(last + 1)}, "nothing to test"),
                             ({"cutoff": "0.9", "valid_cutoff": "0.95"}, "after --cutoff"),
                             ({"cutoff": "0.3"}, "does not fit"),
                             ({"cutoff": str(first), "valid": False}, "nothing to train on")):
        with pytest.raises(RecscaleError, match=message):
            prepare(movielens, PrepareConfig(protocol="temporal", **options), tmp_path / "out")
        assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="cutoff"):
        PrepareConfig(protocol="temporal", cutoff="next tuesday")


def test_evaluation_counts_the_users_a_model_cannot_score(temporal):
    shape = DataShape(temporal.n_users, temporal.n_items)
    popularity = Popularity(shape)
    popularity.fit(sparse_tensor(temporal.user_items("train")))
    gmf = GMF(shape, GMFConfig(factors=4))
    target = temporal.rows("test")
    tested = np.flatnonzero(np.diff(target.indptr))
    before = np.diff(temporal.rows("train", "valid").indptr)[tested] > 0
    trained = np.diff(temporal.rows("train").indptr)[tested] > 0
    assert (~before).sum() > 0 and (before & ~trained).sum() > 0  # both kinds of cold user exist here
    folded = evaluate(popularity, temporal, "test", ks=(10,))
    assert folded["users"] == before.sum() and folded["unscored_users"] == (~before).sum()
    pairwise = evaluate(gmf, temporal, "test", ks=(10,))  # folds in users first seen in the validation window
    assert pairwise["users"] == before.sum() and pairwise["unscored_users"] == (~before).sum()


def test_the_cli_prepares_a_temporal_split_and_reports_the_cold_part(tmp_path):
    out = subprocess.run([sys.executable, "-m", "recscale", "prepare", "--dataset", "ml-latest-small",
                          "--protocol", "temporal", "--cutoff", "2015-01-01", "--out", str(tmp_path / "t")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "test:" in out.stderr and "no training interaction" in out.stderr
    bad = subprocess.run([sys.executable, "-m", "recscale", "prepare", "--dataset", "ml-latest-small",
                          "--protocol", "temporal", "--cutoff", "soon", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--cutoff" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()

"""The `seq` protocol (issue 29, item 1): each user's time-ordered sequence, the last interaction
the test target, the one before the validation target, the rest train; users under `--min-seq`
dropped; ties in time by the tie rule; the same files from both engines."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions
from recscale.data.ingest.scan import ratings_source
from recscale.data.prepare.memory import prepare
from recscale.data.prepare.presplit import import_split
from recscale.data.prepare.stream import prepare_stream
from recscale.errors import RecscaleError


def _log(tmp_path):
    """Users 1..40 with 1..8 interactions in a shuffled file order; user 7's last two share a time
    (the later line is the later interaction under tie_break=file)."""
    rng = np.random.default_rng(3)
    rows = [(u, int(i), 4.0, 1_000 + 10 * t) for u in range(1, 41) for t, i in
            enumerate(rng.choice(60, size=1 + u % 8, replace=False))]
    rows = [r if not (r[0] == 7 and r[3] == 1_000 + 10 * (7 % 8)) else (*r[:3], r[3] - 10) for r in rows]
    frame = pl.DataFrame(rows, schema=["userId", "movieId", "rating", "timestamp"], orient="row")
    path = tmp_path / "ratings.csv"
    frame.sample(fraction=1.0, shuffle=True, seed=1).write_csv(path)
    return path, frame


def _prepare(path, cfg, out, engine):
    if engine == "memory":
        return prepare(RawDataset(path.stem, read_interactions(path), None, (path,)), cfg, out)
    return prepare_stream(ratings_source(path), cfg, out, rows_per_bucket=25)


def test_last_is_test_one_before_is_valid_and_short_users_are_dropped(tmp_path):
    path, frame = _log(tmp_path)
    for engine in ("memory", "stream"):
        _prepare(path, PrepareConfig(protocol="seq", min_seq=4), tmp_path / engine, engine)
    data = PreparedDataset(tmp_path / "memory")
    users, items = data.original_user_ids(), data.original_item_ids()
    file_order = pl.read_csv(path)
    expected = {u: g.sort("timestamp", maintain_order=True)["movieId"].to_list()  # stable: the file's order on ties
                for (u,), g in file_order.group_by("userId") if g.height >= 4}
    assert sorted(users.tolist()) == sorted(expected)  # users with fewer than --min-seq are gone
    indptr, seq = data.sequences("train", "valid", "test")
    for n, user in enumerate(users.tolist()):
        assert items[seq[indptr[n]:indptr[n + 1]]].tolist() == expected[user], user
    for part, at in (("test", -1), ("valid", -2)):
        table = data.table(part)
        assert table.height == len(expected)
        got = dict(zip(users[table["user"].to_numpy()].tolist(), items[table["item"].to_numpy()].tolist()))
        assert got == {u: s[at] for u, s in expected.items()}, part
    t_indptr, t_seq = data.sequences("train")
    assert np.array_equal(np.diff(t_indptr), np.diff(indptr) - 2)  # train = all but the last two
    assert data.meta["protocol"]["min_seq"] == 4 and data.sampled_negatives is None  # full ranking
    a, b = (json.loads((tmp_path / e / "meta.json").read_text()) for e in ("memory", "stream"))
    assert {k: v for k, v in a.items() if k != "sha256"} == {k: v for k, v in b.items() if k != "sha256"}
    for name in a["files"].values():
        assert pl.read_parquet(tmp_path / "memory" / name).equals(pl.read_parquet(tmp_path / "stream" / name)), name


def test_min_seq_below_three_and_sequences_of_other_protocols_are_refused(tmp_path):
    with pytest.raises(Exception, match="min_seq"):
        PrepareConfig(protocol="seq", min_seq=2)
    path, _ = _log(tmp_path)
    _prepare(path, PrepareConfig(protocol="random"), tmp_path / "random", "memory")
    with pytest.raises(RecscaleError, match="--protocol seq"):
        PreparedDataset(tmp_path / "random").sequences("train")
    with pytest.raises(RecscaleError, match="no pre-split import"):
        import_split("x", {}, "seq", tmp_path / "out")


def test_the_loading_factory_cuts_next_item_batches_from_the_training_sequences(tmp_path):
    from recscale.config.run import LoaderConfig
    from recscale.data.loading.batch import PAD, Sequences
    from recscale.data.loading.factory import decide_loading, training_loader

    path, _ = _log(tmp_path)
    _prepare(path, PrepareConfig(protocol="seq"), tmp_path / "seq", "memory")
    data = PreparedDataset(tmp_path / "seq")
    indptr, seq = data.sequences("train")
    loader = training_loader(Sequences(max_len=3), data, decide_loading(LoaderConfig(batch_size=4), data))
    batches = list(loader)
    assert sum(len(b) for b in batches) == int((np.diff(indptr) >= 2).sum())
    for b in batches:
        for u, x in zip(b.users.tolist(), b.inputs.tolist()):
            train = seq[indptr[u]:indptr[u + 1]].tolist()
            assert [i for i in x if i != PAD] == train[-4:-1]  # never a validation or test item
    with pytest.raises(RecscaleError, match="sequence batches are read in memory"):
        training_loader(Sequences(3), data, decide_loading(LoaderConfig(batch_size=4, data_loading="stream"), data))

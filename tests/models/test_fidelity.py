"""Fidelity (issue 20): the ncf tie rule equals a stable sort by time (RecBole's), the other rules
on request, RecBole's recall under its own name, and 95% intervals on every metric."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import polars as pl
import pytest
import torch

from recscale.cli import main
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions
from recscale.data.prepare.memory import prepare
from recscale.evaluation.metrics import interval_half_width, per_user_metrics
from recscale.evaluation.protocols import evaluate
from recscale.models.base import DataShape
from recscale.models.registry import MODELS
from recscale.training.run import sparse_tensor
from tests.helpers import write_ratings

# user, item, timestamp: many equal timestamps, item ids not in time order
ROWS = [(1, 50, 100), (1, 10, 300), (1, 40, 300), (1, 20, 300), (1, 30, 200),
        (2, 10, 5), (2, 90, 5), (2, 70, 5), (2, 80, 5),
        (3, 70, 9), (3, 60, 7), (3, 10, 9), (3, 20, 8), (3, 30, 9), (3, 40, 1)]


def _reference(rows):
    """The split a stable sort by (user, timestamp) gives, as RecBole's leave-one-out does: per user
    the last row is the test positive, the one before it the validation positive."""
    by_user: dict[int, list] = {}
    for user, item, t in sorted(rows, key=lambda r: (r[0], r[2])):  # Python's sort is stable
        by_user.setdefault(user, []).append(item)
    return ({u: items[-1] for u, items in by_user.items()}, {u: items[-2] for u, items in by_user.items()})


def _split(data: PreparedDataset, part: str) -> dict:
    users, items = data.original_user_ids(), data.original_item_ids()
    frame = data.table(part)
    return {int(users[u]): int(items[i]) for u, i in zip(frame["user"], frame["item"])}


def _prepare(tmp_path, rows, name, **cfg):
    path = write_ratings(tmp_path / f"{name}.csv", [f"{u},{i},4,{t}" for u, i, t in rows])
    raw = RawDataset(name, read_interactions(path), None, (path,))
    prepare(raw, PrepareConfig(protocol="ncf", test_negatives=1, **cfg), tmp_path / name)
    return PreparedDataset(tmp_path / name)


def test_the_default_ncf_split_is_the_stable_sort_reference(tmp_path):
    data = _prepare(tmp_path, ROWS, "file")
    test, valid = _reference(ROWS)
    assert _split(data, "test") == test == {1: 20, 2: 80, 3: 30}
    assert _split(data, "valid") == valid == {1: 40, 2: 70, 3: 10}
    assert data.tie_break == "file" and data.meta["schema_version"] == 2


def test_the_item_and_random_rules(tmp_path):
    by_item = _prepare(tmp_path, ROWS, "item", tie_break="item")
    assert _split(by_item, "test") == {1: 40, 2: 90, 3: 70}  # the highest item among the latest
    assert by_item.meta["protocol"]["tie_break"] == "item"
    # random: seeded, and a function of the data, not of the order of the lines
    shuffled = ROWS[:]
    random.Random(1).shuffle(shuffled)
    splits = [_split(_prepare(tmp_path, rows, f"random{n}", tie_break="random", seed=seed), "test")
              for n, (rows, seed) in enumerate([(ROWS, 3), (shuffled, 3)])]
    assert splits[0] == splits[1]
    seeds = {tuple(sorted(_split(_prepare(tmp_path, ROWS, f"r{s}", tie_break="random", seed=s), "test").items()))
             for s in range(6)}
    assert len(seeds) > 1  # ties are really broken at random


def test_repeated_pairs_keep_the_later_line_among_equal_timestamps(tmp_path):
    path = write_ratings(tmp_path / "dup.csv", ["1,5,2,10", "1,5,4,10", "1,6,3,1", "1,7,3,2", "2,5,1,1", "2,6,1,2"])
    raw = RawDataset("dup", read_interactions(path), None, (path,))
    prepare(raw, PrepareConfig(protocol="random", ratios=(1.0, 0.0, 0.0)), tmp_path / "p")
    data = PreparedDataset(tmp_path / "p")
    items = data.original_item_ids()
    train = data.table("train").filter(pl.col("user") == 0)
    assert dict(zip(items[train["item"].to_numpy()].tolist(), train["rating"].to_list()))[5] == 4.0


def test_datasets_of_schema_1_still_load_and_say_their_rule(tmp_path):
    data = _prepare(tmp_path, ROWS, "v1")
    meta = json.loads((tmp_path / "v1" / "meta.json").read_text())
    meta["schema_version"] = 1
    del meta["protocol"]["tie_break"]
    (tmp_path / "v1" / "meta.json").write_text(json.dumps(meta))
    assert PreparedDataset(tmp_path / "v1").tie_break == "item"
    assert data.tie_break == "file"


# ----------------------------------------------------------------------------- metrics


def test_recall_under_both_definitions():
    scores = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    relevant = torch.tensor([[True, False, True, True, False]])  # 3 relevant, 1 in the top 1, 2 in the top 3
    m = per_user_metrics(scores, relevant, (1, 3))
    assert m["recall@1"].item() == 1.0 and m["recall_recbole@1"].item() == pytest.approx(1 / 3)
    assert m["recall@3"].item() == pytest.approx(2 / 3) and m["recall_recbole@3"].item() == pytest.approx(2 / 3)


def test_every_metric_carries_its_95_percent_interval(popularity):
    model, data = popularity("random")
    result = evaluate(model, data, "test", ks=(10,))
    # the same interval from the per-user values, computed here with numpy
    from recscale.evaluation.protocols import dense_rows, evaluation_sets
    users, inputs, masked, target = evaluation_sets(data, "test")
    scores = model.score(torch.from_numpy(users), None).float().masked_fill(dense_rows(masked, users, "cpu") > 0,
                                                                           float("-inf"))
    per_user = per_user_metrics(scores, dense_rows(target, users, "cpu") > 0, (10,))["ndcg@10"].numpy()
    half = 1.959963984540054 * per_user.std(ddof=1) / math.sqrt(per_user.size)
    assert result["users"] == per_user.size and result["ndcg@10"] == pytest.approx(per_user.mean())
    assert result["ci95"]["ndcg@10"] == pytest.approx(half, rel=1e-9)
    assert math.isnan(interval_half_width(1.0, 1.0, 1))


def test_test_users_can_be_scored_from_training_rows_only(tmp_path):
    from tests.helpers import synthetic_raw
    prepare(synthetic_raw(n_users=120, n_items=200, per_user=25), PrepareConfig(protocol="random"), tmp_path / "r")
    data = PreparedDataset(tmp_path / "r")
    model = MODELS["ease"](DataShape(data.n_users, data.n_items), MODELS["ease"].Config(lam=50.0))
    model.fit(sparse_tensor(data.user_items("train")))
    both = evaluate(model, data, "test", ks=(10,))
    train_only = evaluate(model, data, "test", ks=(10,), test_history="train")
    assert both["users"] == train_only["users"] and both["ndcg@10"] != train_only["ndcg@10"]


def test_the_evaluate_command_prints_intervals_and_a_small_split_is_flagged(tmp_path, capsys):
    code = main(["prepare", "--dataset", "ml-latest-small", "--protocol", "vae", "--out", str(tmp_path / "v")])
    err = capsys.readouterr().err
    assert code == 0 and "only 65 validation and 65 test users are held out" in err and "--heldout-users" in err
    assert main(["train", "--data", str(tmp_path / "v"), "--model", "popularity", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "r"), "--k", "20"]) == 0
    out = capsys.readouterr().out
    assert "±" in out and " 65" in out
    saved = json.loads((tmp_path / "r" / "eval-test.json").read_text())
    assert saved["users"] == 65 and 0 < saved["ci95"]["ndcg@20"] < 0.2


# ----------------------------------------------------------------------------- KL annealing and early stopping


def test_early_stopping_waits_until_the_kl_weight_reaches_its_cap(tmp_path):
    from recscale.models.vae import MultVAE, MultVAEConfig, kl_beta
    model = MultVAE(DataShape(10, 20), MultVAEConfig(anneal_cap=0.2))
    schedule = model.step_schedule(total_steps=1000)  # auto: anneal over 800 steps
    assert schedule.settled_step == 160  # 0.2 x 800: the cap is reached at 16% of the run
    assert schedule.kwargs(159)["beta"] < 0.2 and schedule.kwargs(160)["beta"] == 0.2 == kl_beta(10**6, 800, 0.2)

    raw = RawDataset("r", pl.DataFrame({"user": np.repeat(np.arange(60), 8), "item": np.tile(np.arange(8), 60) * 3
                                        + np.repeat(np.arange(60) % 3, 8), "rating": np.full(480, 5.0, np.float32),
                                        "timestamp": np.arange(480)}), None, ())
    prepare(raw, PrepareConfig(protocol="vae", heldout_users=6), tmp_path / "v")
    import recscale

    # validation never improves after the first epoch (a constant metric), patience 1: without
    # the wait the run would stop after epoch 2; the KL weight settles only in epoch 8
    from recscale.training import trainer as trainer_module
    original = trainer_module.Trainer.validate
    trainer_module.Trainer.validate = lambda self: {"split": "valid", "ndcg@100": 0.5, "users": 6}
    try:
        run = recscale.train(tmp_path / "v", "multvae", tmp_path / "run", epochs=20, batch_size=8, patience=1,
                             total_anneal_steps=60, anneal_cap=0.8, device="cpu", progress=False)
    finally:
        trainer_module.Trainer.validate = original
    steps_per_epoch = 6  # 48 training users, 8 per batch
    settled_epoch = math.ceil(0.8 * 60 / steps_per_epoch)  # the epoch that ends at step 48
    assert len(run.history) == settled_epoch == 8

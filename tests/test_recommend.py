"""`recscale recommend`: right top-k on a hand-checked case, never an already-seen item."""

import numpy as np
import polars as pl

from recscale.cli import main
from recscale.config.layers import build_run_config
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.prepare.memory import prepare
from recscale.training.run import start_run


def _tiny(tmp_path):
    """Items 14, 13, 12, 11, 10 taken by users 100..104 in a staircase, and user 105 with 10 and 11:
    popularity 14: 5, 13: 4, 12: 3, 11: 3, 10: 2."""
    rows = []
    for item, users in ((14, range(5)), (13, range(4)), (12, range(3)), (11, range(2)), (10, range(1))):
        rows += [(100 + u, item, 4.0, item) for u in users]
    rows += [(105, 10, 4.0, 1), (105, 11, 4.0, 2)]
    frame = pl.DataFrame(rows, schema={"user": pl.Int64, "item": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
                         orient="row")
    prepare(RawDataset("tiny", frame, None, ()), PrepareConfig(protocol="random", ratios=(1.0, 0.0, 0.0)),
            tmp_path / "data")
    start_run(build_run_config({"data": str(tmp_path / "data"), "model": "popularity", "device": "cpu"}), {}, tmp_path / "run")
    return tmp_path / "run"


def test_hand_checked_top_k_with_original_ids(tmp_path, capsys):
    run = _tiny(tmp_path)
    assert main(["recommend", "--run", str(run), "--k", "2", "--all", "--out", str(tmp_path / "recs.tsv")]) == 0
    lines = (tmp_path / "recs.tsv").read_text().splitlines()
    recs = {}
    for line in lines[1:]:
        user, rank, item, score, fallback = line.split("\t")
        assert fallback == "0"
        recs.setdefault(int(user), []).append((int(rank), int(item)))
    # 100 has every item: nothing left; 101 lacks only 10; 103 lacks 12, 11, 10, where 12 and 11
    # tie (3 users each) and the lower id comes first; 105 has only 10 and 11
    assert 100 not in recs
    assert recs[101] == [(1, 10)]
    assert recs[103] == [(1, 11), (2, 12)]
    assert recs[105] == [(1, 14), (2, 13)]


def test_never_recommends_a_seen_item_and_parquet_matches_tsv(prepared, tmp_path):
    data = prepared("random")
    start_run(build_run_config({"data": str(data.root), "model": "popularity", "device": "cpu"}), {}, tmp_path / "run")
    assert main(["recommend", "--run", str(tmp_path / "run"), "--k", "20", "--all",
                 "--out", str(tmp_path / "recs.parquet")]) == 0
    recs = pl.read_parquet(tmp_path / "recs.parquet")
    assert len(recs) == 20 * data.n_users
    seen = pl.concat([data.table(p).select("user", "item") for p in ("train", "valid", "test")])
    users, items = data.original_user_ids(), data.original_item_ids()
    seen_pairs = set(zip(users[seen["user"].to_numpy()], items[seen["item"].to_numpy()]))
    assert not seen_pairs & set(zip(recs["user"].to_list(), recs["item"].to_list()))
    assert recs.group_by("user").agg(pl.col("rank"))["rank"].to_list() == [list(range(1, 21))] * data.n_users
    assert main(["recommend", "--run", str(tmp_path / "run"), "--k", "20", "--all",
                 "--out", str(tmp_path / "recs.tsv")]) == 0
    tsv = pl.read_csv(tmp_path / "recs.tsv", separator="\t", quote_char=None)
    assert tsv["item"].to_list() == recs["item"].to_list()
    assert tsv.columns == recs.columns == ["user", "rank", "item", "score", "fallback", "title", "genres"]
    assert tsv["title"].to_list() == recs["title"].to_list()


def test_recommendations_carry_the_item_features_chosen(prepared, tmp_path, capsys):
    data = prepared("random")
    start_run(build_run_config({"data": str(data.root), "model": "popularity", "device": "cpu"}), {}, tmp_path / "run")
    base = ["recommend", "--run", str(tmp_path / "run"), "--k", "3", "--all"]
    assert main([*base, "--out", str(tmp_path / "a.parquet"), "--columns", "title"]) == 0
    recs = pl.read_parquet(tmp_path / "a.parquet")
    items = data.table("items")
    titles = dict(zip(items["original_id"].to_list(), items["title"].to_list()))
    assert recs.columns[-1] == "title" and "genres" not in recs.columns
    assert all(titles[i] == t for i, t in zip(recs["item"].to_list(), recs["title"].to_list()))
    assert main([*base, "--out", str(tmp_path / "b.tsv"), "--columns", ""]) == 0
    assert (tmp_path / "b.tsv").read_text().splitlines()[0] == "user\trank\titem\tscore\tfallback"
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "c.tsv"), "--columns", "titel"]) == 2
    assert "--columns: 'titel' is not an item feature" in capsys.readouterr().err
    assert not (tmp_path / "c.tsv").exists()


def test_unknown_and_malformed_user_ids_are_reported_and_the_rest_served(tmp_path, capsys):
    run = _tiny(tmp_path)
    users = tmp_path / "users.txt"
    users.write_text("user\n101\nabc\n999\n\n103\n")
    code = main(["recommend", "--run", str(run), "--k", "1", "--users", str(users), "--out", str(tmp_path / "r.tsv")])
    err = capsys.readouterr().err
    assert code == 0
    assert f"{users}:3: not a user id: 'abc'" in err and f"{users}:4: unknown user id '999'" in err
    served = [line.split("\t")[0] for line in (tmp_path / "r.tsv").read_text().splitlines()[1:]]
    assert served == ["101", "103"]


def test_bad_output_name_leaves_nothing(tmp_path, capsys):
    run = _tiny(tmp_path)
    assert main(["recommend", "--run", str(run), "--all", "--out", str(tmp_path / "recs.csv")]) == 2
    assert "use a .tsv or .parquet file name" in capsys.readouterr().err
    assert not list(tmp_path.glob("recs*"))


def test_users_without_history_get_popular_items_flagged(tmp_path, capsys):
    """Under `vae`, a held-out user whose items no training user has keeps no fold-in input."""
    rows = [(u, i, 5.0, u * 100 + i) for u in range(40) for i in range(12) if (u + i) % 3]
    rows += [(100 + u, 1000 + 10 * u + i, 5.0, i) for u in range(40) for i in range(5)]  # items of their own
    frame = pl.DataFrame(rows, schema={"user": pl.Int64, "item": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64},
                         orient="row")
    prepare(RawDataset("isolated", frame, None, ()), PrepareConfig(protocol="vae", heldout_users=20, seed=1),
            tmp_path / "data")
    data = PreparedDataset(tmp_path / "data")
    held = set(data.group_users("valid").tolist()) | set(data.group_users("test").tolist())
    with_input = set(data.table("valid_foldin")["user"].to_list()) | set(data.table("test_foldin")["user"].to_list())
    lonely = {int(data.original_user_ids()[u]) for u in held - with_input}
    assert lonely  # the seed puts some isolated users among the held-out ones
    start_run(build_run_config({"data": str(tmp_path / "data"), "model": "ease", "device": "cpu"}), {}, tmp_path / "run")
    assert main(["recommend", "--run", str(tmp_path / "run"), "--k", "3", "--all", "--out", str(tmp_path / "r.tsv")]) == 0
    recs = pl.read_csv(tmp_path / "r.tsv", separator="\t")
    flagged = set(recs.filter(pl.col("fallback") == 1)["user"].to_list())
    assert flagged == lonely
    counts = np.bincount(data.table("train")["item"].to_numpy(), minlength=data.n_items)
    top3 = data.original_item_ids()[np.lexsort((np.arange(data.n_items), -counts))[:3]]
    for user in lonely:
        assert recs.filter(pl.col("user") == user)["item"].to_list() == top3.tolist()

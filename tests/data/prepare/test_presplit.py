"""Splits made elsewhere: the NCF paper's files with their own negatives, and train/valid/test files
under each protocol, imported as they are."""

from __future__ import annotations

import json

import numpy as np

from recscale.cli import main
from recscale.data.dataset.prepared import PreparedDataset
from recscale.evaluation.protocols import evaluate
from recscale.models.popularity import Popularity
from recscale.training.build import data_shape
from recscale.training.run import sparse_tensor


def _ncf_paper(root, users=12, items=40, negatives=9, seed=0):
    rng = np.random.default_rng(seed)
    train, test, neg = [], [], []
    for u in range(users):
        chosen = rng.choice(items, size=8, replace=False)
        train += [f"{u}\t{i}\t{1 + (u + i) % 5}\t{1000 + k}" for k, i in enumerate(chosen[:-1])]
        test.append(f"{u}\t{chosen[-1]}\t5\t2000")
        others = np.setdiff1d(np.arange(items), chosen)
        neg.append(f"({u},{chosen[-1]})\t" + "\t".join(str(i) for i in rng.choice(others, negatives, replace=False)))
    (root / "tiny.train.rating").write_text("\n".join(train) + "\n")
    (root / "tiny.test.rating").write_text("\n".join(test) + "\n")
    (root / "tiny.test.negative").write_text("\r\n".join(neg) + "\r\n\r\n")
    return neg


def test_ncf_paper_split_keeps_its_own_negatives(tmp_path, capsys):
    lines = _ncf_paper(tmp_path)
    code = main(["prepare", "--format", "ncf-paper", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "p")])
    assert code == 0, capsys.readouterr().err
    data = PreparedDataset(tmp_path / "p")
    assert data.protocol == "ncf" and data.meta["protocol"]["test_negatives"] == 9
    assert not data.has("valid") and data.meta["counts"]["test"] == 12
    users, negatives = data.negatives("test")
    original_items = data.original_item_ids()
    original_users = data.original_user_ids()
    test = data.table("test")
    for row, u in enumerate(users.tolist()):
        fields = lines[int(original_users[u])].split("\t")
        assert sorted(original_items[negatives[row]].tolist()) == sorted(int(f) for f in fields[1:])
        assert test["user"][row] == u
    # evaluation runs on the paper's candidates: popularity scores something sane
    model = Popularity(data_shape(data))
    model.fit(sparse_tensor(data.user_items("train")))
    metrics = evaluate(model, data, "test", ks=(5,))
    assert 0.0 <= metrics["hr@5"] <= 1.0


def test_bad_ncf_negative_line_names_file_and_line(tmp_path, capsys):
    _ncf_paper(tmp_path)
    text = (tmp_path / "tiny.test.negative").read_text().splitlines()
    text[3] = "3,4\t1\t2"
    (tmp_path / "tiny.test.negative").write_text("\n".join(text) + "\n")
    code = main(["prepare", "--format", "ncf-paper", "--raw-dir", str(tmp_path), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "tiny.test.negative:4: expected '(user,item)'" in err
    assert not (tmp_path / "p").exists()


def _write(path, rows, header="user,item,rating,timestamp"):
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return str(path)


def test_random_protocol_import_keeps_the_split_exactly(tmp_path, capsys):
    rng = np.random.default_rng(1)
    rows = [(f"u{u}", f"i{i}", float(rng.integers(1, 6)), u * 100 + i) for u in range(30) for i in range(20) if (u + i) % 3]
    train, valid, test = rows[::3] + rows[1::3][:50], rows[1::3][50:], rows[2::3]
    args = ["prepare", "--protocol", "random", "--user-col", "user", "--item-col", "item",
            "--train-file", _write(tmp_path / "train.csv", train), "--valid-file", _write(tmp_path / "valid.csv", valid),
            "--test-file", _write(tmp_path / "test.csv", test), "--out", str(tmp_path / "p")]
    assert main(args) == 0, capsys.readouterr().err
    data = PreparedDataset(tmp_path / "p")
    counts = data.meta["counts"]
    assert (counts["train"], counts["valid"], counts["test"]) == (len(train), len(valid), len(test))
    assert data.meta["protocol"]["imported"] is True


def test_vae_import_needs_disjoint_user_groups(tmp_path, capsys):
    train = [(u, i, 5.0, i) for u in range(10) for i in range(8)]
    held = [(u, i, 5.0, i) for u in range(10, 14) for i in range(8)]
    files = {"--train-file": train, "--valid-file": held[:16], "--valid-heldout-file": held[16:20],
             "--test-file": held[20:28], "--test-heldout-file": held[28:]}
    def args(out):
        argv = ["prepare", "--protocol", "vae", "--user-col", "user", "--item-col", "item", "--out", str(out)]
        for flag, rows in files.items():
            argv += [flag, _write(tmp_path / f"{flag[2:]}.csv", rows)]
        return argv

    assert main(args(tmp_path / "p")) == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["counts"]["valid_users"] == 2 and meta["counts"]["test_users"] == 2
    files["--test-file"] = [(0, 1, 5.0, 1)] + held[21:28]  # user 0 also trains
    assert main(args(tmp_path / "q")) == 2 and not (tmp_path / "q").exists()
    assert "must be disjoint" in capsys.readouterr().err


def test_missing_parts_are_named(tmp_path, capsys):
    code = main(["prepare", "--train-file", _write(tmp_path / "t.csv", [(1, 2, 3.0, 4)], "userId,movieId,rating,timestamp"),
                 "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "needs train, test" in err and "missing test" in err

"""evaluation/compare.py and `recscale compare`: paired tests that match scipy on fixed inputs,
find a real difference, and find none between a run and its twin."""

import json

import numpy as np
import polars as pl
import pytest
from scipy import stats

from recscale.cli import main
from recscale.evaluation.compare import bootstrap_interval, compare_users, holm, paired_tests


def test_the_tests_match_scipy_and_holm_by_hand():
    rng = np.random.default_rng(1)
    a = rng.random(200)
    b = a + 0.05 + rng.normal(0, 0.1, 200)  # really better, by 0.05 on average
    result = paired_tests(a, b)
    assert result["t_test_p"] == pytest.approx(stats.ttest_rel(b, a).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(b, a).pvalue)
    assert result["t_test_p"] < 1e-6 and result["ci95_low"] > 0 and result["difference"] == pytest.approx((b - a).mean())
    assert bootstrap_interval(b - a, seed=3) == bootstrap_interval(b - a, seed=3)  # seeded
    same = paired_tests(a, a.copy())
    assert same["t_test_p"] == same["wilcoxon_p"] == 1.0 and same["ci95_low"] == same["ci95_high"] == 0.0
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept monotone: 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])


def test_pairs_join_on_the_users_both_runs_evaluated():
    one = pl.DataFrame({"user": [1, 2, 3, 4], "hr@10": [1.0, 0.0, 1.0, 0.0]})
    two = pl.DataFrame({"user": [4, 3, 2, 9], "hr@10": [1.0, 1.0, 0.0, 1.0]})
    (row,) = compare_users({"one": one, "two": two}, ["hr@10"])
    assert row["users"] == 3 and row["difference"] == pytest.approx(1 / 3)  # users 2, 3, 4: only 4 changed


def _train(data, out, model):
    return main(["-q", "train", "--data", str(data.root), "--model", model, "--epochs", "1", "--device", "cpu",
                 "--out", str(out)])


def test_compare_a_run_with_its_twin_and_refuse_other_datasets(small_ncf, prepared, tmp_path, capsys):
    assert _train(small_ncf, tmp_path / "pop", "popularity") == 0
    assert _train(small_ncf, tmp_path / "twin", "popularity") == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "pop"), str(tmp_path / "twin"), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in rows} == {"hr@10", "mrr"}
    assert all(r["difference"] == 0 and r["t_test_p_holm"] == 1.0 and r["users"] == small_ncf.n_users for r in rows)
    users = pl.read_parquet(tmp_path / "pop" / "eval-test-users.parquet")  # written beside eval-test.json
    evaluated = json.loads((tmp_path / "pop" / "eval-test.json").read_text())
    assert users.height == evaluated["users"] and users["hr@10"].mean() == pytest.approx(evaluated["hr@10"])
    assert 0 <= evaluated["gini@10"] <= 1 and evaluated["novelty@10"] > 0  # beyond accuracy, beside it
    assert _train(prepared("ncf"), tmp_path / "other", "popularity") == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "pop"), str(tmp_path / "other")]) == 2
    assert "different datasets" in capsys.readouterr().err

"""Ranking metrics: hand-computed cases, a slow reference on random inputs, batch-size independence."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recscale.evaluation.metrics import per_user_metrics
from recscale.evaluation.protocols import evaluate
from recscale.models.base import DataShape
from recscale.models.registry import MODELS


def _averages(scores, relevant, ks):
    values = per_user_metrics(torch.tensor(scores, dtype=torch.float32), torch.tensor(relevant), ks)
    return {k: float(v.mean()) for k, v in values.items()}


def test_hand_computed_single_user():
    # ranking by score: items 3 (0.9), 0 (0.8), 4 (0.5), 1 (0.3), 2 (0.1); relevant: 0 and 1
    m = _averages([[0.8, 0.3, 0.1, 0.9, 0.5]], [[True, True, False, False, False]], (1, 2, 4))
    assert m["hr@1"] == 0 and m["hr@2"] == 1
    assert m["recall@2"] == 0.5 and m["recall@4"] == 1.0 and m["recall@1"] == 0.0
    assert m["precision@2"] == 0.5 and m["precision@4"] == 0.5
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert m["ndcg@4"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3)))
    assert m["mrr"] == 0.5
    assert m["map@4"] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_ties_count_against_the_model_and_empty_rows_are_skipped():
    m = _averages([[1.0, 1.0, 1.0], [0.2, 0.1, 0.0], [5.0, 1.0, 2.0]],
                  [[False, True, False], [True, False, False], [False, False, False]], (1, 3))
    # row 1: all tied, the relevant item ranks last (3rd); row 2: first; row 3: no relevant item
    assert m["hr@1"] == 0.5 and m["mrr"] == pytest.approx((1 / 3 + 1) / 2)
    values = per_user_metrics(torch.tensor([[1.0, 1.0]]), torch.tensor([[False, False]]), (1,))
    assert all(v.numel() == 0 for v in values.values())


def _reference(scores, relevant, k):
    """Obviously correct: sort with Python, ties against the model, then count."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], relevant[i], i))
    ranked = [relevant[i] for i in order]
    n_rel = sum(relevant)
    hits = ranked[:k]
    dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
    idcg = sum(1 / math.log2(r + 2) for r in range(min(k, n_rel)))
    ap = sum(sum(hits[:r + 1]) / (r + 1) for r, h in enumerate(hits) if h) / min(k, n_rel)
    return {f"hr@{k}": float(any(hits)), f"recall@{k}": sum(hits) / min(k, n_rel), f"precision@{k}": sum(hits) / k,
            f"ndcg@{k}": dcg / idcg, f"map@{k}": ap, "mrr": 1 / (ranked.index(True) + 1),
            f"mrr@{k}": 1 / (hits.index(True) + 1) if any(hits) else 0.0}


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_metrics_match_a_slow_reference(data):
    n = data.draw(st.integers(2, 12))
    rows = data.draw(st.integers(1, 5))
    # few distinct values, so ties are common
    scores = [[data.draw(st.integers(-3, 3)) / 2 for _ in range(n)] for _ in range(rows)]
    relevant = []
    for _ in range(rows):
        row = [data.draw(st.booleans()) for _ in range(n)]
        row[data.draw(st.integers(0, n - 1))] = True
        relevant.append(row)
    k = data.draw(st.integers(1, n))
    got = _averages(scores, relevant, (k,))
    expected = [_reference(s, r, k) for s, r in zip(scores, relevant)]
    for name in expected[0]:
        assert got[name] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-9), name


@pytest.mark.parametrize("margin", [0, 1, 16])
def test_massive_ties_past_the_candidate_margin_are_ranked_exactly(monkeypatch, margin):
    from recscale import ranking
    monkeypatch.setattr(ranking, "TIE_MARGIN", margin)
    rng = np.random.default_rng(margin)
    scores = rng.integers(0, 3, (40, 30)).astype(float).tolist()  # 3 values in 30 columns: ties spill
    scores[0] = [1.0] * 30
    relevant = (rng.random((40, 30)) < 0.2).tolist()
    relevant[0] = [False] * 29 + [True]
    for row in relevant:
        row[rng.integers(30)] = True
    for k in (1, 5, 10):
        got = _averages(scores, relevant, (k,))
        expected = [_reference(sc, r, k) for sc, r in zip(scores, relevant)]
        for name in expected[0]:
            assert got[name] == pytest.approx(np.mean([e[name] for e in expected]), abs=1e-9), (name, k)


@pytest.mark.parametrize("protocol", ["ncf", "vae", "random"])
def test_results_do_not_depend_on_the_batch_size(prepared, protocol):
    data = prepared(protocol)
    model = MODELS["popularity"](DataShape(data.n_users, data.n_items))
    from recscale.training.run import sparse_tensor
    model.fit(sparse_tensor(data.user_items("train")))
    split = "test"
    results = [evaluate(model, data, split, ks=(10, 100), batch_size=b) for b in (7, 100, 4096)]
    assert results[0] == results[1] == results[2]
    assert results[0]["users"] > 0


def test_catalog_coverage_counts_the_items_shown_to_some_user(popularity):
    from recscale.evaluation.protocols import evaluation_sets
    model, data = popularity("random")
    result = evaluate(model, data, "test", ks=(10,))
    users, inputs, masked, target = evaluation_sets(data, "test")
    assert masked is inputs  # scored from, and masked by, train + valid
    counts = model.counts.numpy()
    shown = set()
    for u in users:  # brute force: each user's 10 most popular unseen items, lower id first on ties
        seen = set(inputs[u].indices)
        order = [i for i in np.lexsort((np.arange(data.n_items), -counts)) if i not in seen]
        shown.update(order[:10])
    assert result["coverage@10"] == pytest.approx(len(shown) / data.n_items)
    assert 10 / data.n_items <= result["coverage@10"] < 0.02

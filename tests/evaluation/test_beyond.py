"""evaluation/beyond.py: novelty, ARP, intra-list diversity and Gini, checked by hand and against a
slow reference from the definitions."""

import math
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recscale.evaluation.beyond import ListStats, gini


def test_gini_of_equal_and_of_concentrated_exposure():
    assert gini(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(0.0)
    assert gini(torch.tensor([0.0, 0.0, 0.0, 4.0])) == pytest.approx(0.75)  # 2*16/16 - 5/4


def test_hand_computed_lists():
    # 4 training users; items 0..3 had 4, 2, 1 and 0 of them; genres: 0 -> {a}, 1 -> {a}, 2 -> {b}, 3 -> none
    train = sp.csr_matrix(np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], dtype=np.float32))
    data = types.SimpleNamespace(n_users=4, item_counts=lambda: np.asarray(train.sum(axis=0), dtype=np.float64).ravel(),
                                 item_genres=lambda: (torch.tensor([0, 0, 1]), torch.tensor([0, 1, 2, 3])))
    stats = ListStats(data, (1, 2), "cpu")
    stats.add(torch.tensor([[0, 1], [2, 3]]))
    out = stats.finish()
    # self-information -log2(share of users): item 0: 0, item 1: 1, item 2: 2, item 3 (nobody, as one): 2
    assert out["novelty@1"] == pytest.approx((0 + 2) / 2) and out["novelty@2"] == pytest.approx((0.5 + 2) / 2)
    assert out["arp@2"] == pytest.approx(((4 + 2) / 2 + (1 + 0) / 2) / 2)
    assert out["ild@2"] == pytest.approx((0 + 1) / 2)  # same genre: 0; a genre and none: distance 1
    assert out["gini@2"] == pytest.approx(0.0) and out["gini@1"] == pytest.approx(0.5)  # [1, 0, 1, 0]


def _slow_reference(train: np.ndarray, genres: list[set], lists: np.ndarray, k: int) -> dict:
    """Loops over users and pairs, from the definitions (independent of ListStats' vector forms)."""
    n_users, n_items = train.shape
    users_of = (train > 0).sum(axis=0)
    counts = train.sum(axis=0)
    novelty = arp = ild = 0.0
    exposure = np.zeros(n_items)
    for row in lists[:, :k]:
        novelty += sum(-math.log2(max(users_of[i], 1) / n_users) for i in row) / k
        arp += sum(counts[i] for i in row) / k
        if k > 1:
            distances = [1 - (len(genres[a] & genres[b]) / math.sqrt(len(genres[a]) * len(genres[b]))
                              if genres[a] and genres[b] else 0.0)
                         for x, a in enumerate(row) for y, b in enumerate(row) if x != y]
            ild += sum(distances) / len(distances)
        for i in row:
            exposure[i] += 1
    n = lists.shape[0]
    mean_difference = np.abs(exposure[:, None] - exposure[None, :]).sum() / (2 * n_items ** 2 * exposure.mean())
    return {f"novelty@{k}": novelty / n, f"arp@{k}": arp / n, f"ild@{k}": ild / n, f"gini@{k}": mean_difference}


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_users=st.integers(1, 6), n_items=st.integers(2, 9), k=st.integers(1, 4),
       n_lists=st.integers(1, 5))
def test_the_list_statistics_match_a_slow_reference(seed, n_users, n_items, k, n_lists):
    rng = np.random.default_rng(seed)
    k = min(k, n_items)
    train = (rng.random((n_users, n_items)) < 0.4).astype(np.float64)
    genres = [set(np.flatnonzero(rng.random(3) < 0.4).tolist()) for _ in range(n_items)]
    values = torch.tensor([g for item in genres for g in sorted(item)], dtype=torch.int64)
    offsets = torch.tensor(np.cumsum([0] + [len(g) for g in genres[:-1]]), dtype=torch.int64)
    data = types.SimpleNamespace(n_users=n_users, item_counts=lambda: train.sum(axis=0).astype(np.float64),
                                 item_genres=lambda: (values, offsets))
    lists = np.stack([rng.permutation(n_items)[:k] for _ in range(n_lists)])
    stats = ListStats(data, (k,), "cpu")
    stats.add(torch.from_numpy(lists))
    got = stats.finish()
    expected = _slow_reference(train, genres, lists, k)
    if not values.numel():  # no genres anywhere: no ILD
        expected.pop(f"ild@{k}")
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name

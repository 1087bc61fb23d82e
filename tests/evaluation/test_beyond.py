"""evaluation/beyond.py: novelty, ARP, intra-list diversity and Gini, checked by hand."""

import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

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

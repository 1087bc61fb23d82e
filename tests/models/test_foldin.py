"""Fold-in of pairwise models (models/foldin.py): the written-out gradients are autograd's, the
steps are the update's on the stated objective, the update is Adam's with one second moment per
user, a user's vectors depend on its history alone, and the steps fit the history."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from recscale.models.base import DataShape
from recscale.models.foldin import EPS, FoldIn, FoldInConfig, adam_update
from recscale.models.ncf import GMF, MLP, GMFConfig, MLPConfig, NeuMF, NeuMFConfig
from recscale.models.tabular import EmbeddingMLP, EmbeddingMLPConfig

N_USERS, N_ITEMS = 20, 30


def _models():
    g = torch.Generator().manual_seed(0)
    shape = DataShape(N_USERS, N_ITEMS, n_genres=5, genre_values=torch.randint(5, (60,), generator=g),
                      genre_offsets=torch.arange(0, 60, 2))
    torch.manual_seed(0)
    models = {"neumf": NeuMF(shape, NeuMFConfig(factors=4, layers=(8, 6, 4), dropout=0.3)),
              "gmf": GMF(shape, GMFConfig(factors=4)), "mlp": MLP(shape, MLPConfig(layers=(8, 4))),
              "mlp-no-hidden-layer": MLP(shape, MLPConfig(layers=(8,))),
              "embedding-mlp": EmbeddingMLP(shape, EmbeddingMLPConfig(layers=(8, 4), user_dim=6, item_dim=5))}
    with torch.no_grad():  # rows as large as trained ones: users and items interact through the towers
        for model in models.values():
            for table in model.tables.values():
                table.weight.copy_(torch.randn(table.weight.shape, generator=g))
    return models


MODELS = list(_models())


@pytest.mark.parametrize("name", MODELS)
def test_the_written_out_gradients_equal_autograds(name):
    model = _models()[name].double().eval()
    g = torch.Generator().manual_seed(1)
    vectors = torch.randn(3, model.fold_in_start().numel(), generator=g, dtype=torch.float64, requires_grad=True)
    items = torch.randint(N_ITEMS, (3, 7), generator=g)
    weights = torch.randn(3, 7, generator=g, dtype=torch.float64)
    logits, backward = model.fold_in_logits(vectors, model.fold_in_candidates(items))
    expected = model.vector_logits(vectors[:, None, :].expand(-1, 7, -1), items)  # (3, 7)
    torch.testing.assert_close(logits, expected, rtol=1e-12, atol=1e-12)
    grad, = torch.autograd.grad((expected * weights).sum(), vectors)
    torch.testing.assert_close(backward(weights), grad, rtol=1e-12, atol=1e-12)
    users = torch.arange(5)  # and a known user's vectors score as its id does
    torch.testing.assert_close(model.vector_logits(model.user_vector(users), items[0, :5]),
                               model.logits(users, items[0, :5]))


def _adam_reference(model, history: torch.Tensor, pool: torch.Tensor, start: torch.Tensor, cfg: FoldInConfig):
    """The fold-in's objective, its gradient by autograd, the same update at a linearly decayed rate."""
    negatives = pool[~torch.isin(pool, history)]
    vector, first, second = start[None].clone(), torch.zeros(1, start.numel(), dtype=start.dtype), torch.zeros(1, 1)
    for step in range(1, cfg.steps + 1):
        vector.requires_grad_(True)
        positive = model.vector_logits(vector.expand(history.numel(), -1), history)
        negative = model.vector_logits(vector.expand(negatives.numel(), -1), negatives)
        loss = (F.binary_cross_entropy_with_logits(positive, torch.ones_like(positive))
                + F.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative)))
        grad, = torch.autograd.grad(loss, vector)
        rate = cfg.lr * (1 - (step - 1) / cfg.steps)
        vector, first, second = adam_update(vector.detach(), grad, first, second.to(grad), step, rate)
    return vector[0]


def test_the_update_is_adams_with_one_second_moment_per_user():
    """On one coordinate it is torch.optim.Adam's; on several, one scale for all of a user's."""
    g = torch.Generator().manual_seed(3)
    value = torch.randn(4, 1, generator=g, dtype=torch.float64)
    reference = value.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([reference], lr=0.1, eps=EPS)
    first, second = torch.zeros_like(value), torch.zeros_like(value)
    for step in range(1, 6):
        grad = torch.randn(4, 1, generator=g, dtype=torch.float64)
        reference.grad = grad.clone()
        optimizer.step()
        value, first, second = adam_update(value, grad, first, second, step, 0.1)
    torch.testing.assert_close(value, reference.detach(), rtol=1e-12, atol=1e-12)
    tiny = torch.tensor([[1.0, 1e-9]], dtype=torch.float64)  # a coordinate of rounding noise barely moves
    moved = adam_update(torch.zeros(1, 2, dtype=torch.float64), tiny, torch.zeros(1, 2), torch.zeros(1, 1), 1, 0.1)[0]
    assert abs(float(moved[0, 1])) < 1e-9 < abs(float(moved[0, 0]))


@pytest.mark.parametrize("name", MODELS)
def test_fold_in_takes_the_updates_steps_on_its_objective(name):
    model = _models()[name].double().eval()
    cfg = FoldInConfig(steps=6, lr=0.1, pool=12)
    fold_in = FoldIn(model, N_ITEMS, cfg)
    items = torch.tensor([[1, 2, 3, 9], [4, 5, 0, 0]])  # the second history has 2 items, then padding
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float64)
    got = fold_in(items, mask)
    for row in range(2):
        expected = _adam_reference(model, items[row][mask[row] > 0], fold_in.pool, fold_in.start, cfg)
        torch.testing.assert_close(got[row], expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(got[0], fold_in.start)


def test_a_users_vectors_depend_on_its_history_alone():
    """The same vectors alone or among other users (longer histories, other chunks), in any
    item order: the fold-in in the server's micro-batches equals recommend's."""
    model = _models()["neumf"].eval()
    rows = torch.zeros(4, N_ITEMS)
    rows[0, [3, 8, 11]] = 1
    rows[1, :20] = 1
    rows[2, [3, 8, 11]] = 1
    alone = model.fold_in_vectors(rows[:1])
    together = model.fold_in_vectors(rows)
    torch.testing.assert_close(together[0], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[2], alone[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(together[3], model.fold_in_start())  # an empty history keeps the start
    torch.testing.assert_close(model.fold_in_vectors(rows.to_sparse_csr()), together)  # sparse rows, never dense


@pytest.mark.parametrize("name", MODELS)
def test_the_steps_fit_the_history(name):
    """The fold-in's objective (the pool is the whole catalog here) is lower after the steps than
    at the start (the average user), for every user."""
    model = _models()[name].eval()
    g = torch.Generator().manual_seed(2)
    rows = (torch.rand(6, N_ITEMS, generator=g) < 0.2).float()
    rows[:, 0] = 1  # no empty history
    vectors = model.fold_in_vectors(rows)
    start = model.fold_in_start().expand_as(vectors)

    def loss(v):
        each = F.binary_cross_entropy_with_logits(model.vector_catalog_scores(v, slice(None)), rows, reduction="none")
        return (each * rows).sum(1) / rows.sum(1) + (each * (1 - rows)).sum(1) / (1 - rows).sum(1)  # (6,)
    assert bool((loss(vectors) < loss(start)).all())

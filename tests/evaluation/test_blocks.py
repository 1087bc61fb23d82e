"""Full ranking in item blocks (evaluation/blocks.py, ranking.RunningTopK): the same top k, metrics,
per-user values, coverage and recommendations as scoring the whole catalog at once, ties included,
and no block of scores larger than the bound."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.prepare.memory import prepare
from recscale.evaluation.metrics import per_user_metrics
from recscale.evaluation.protocols import evaluate, evaluation_sets
from recscale.models.base import DataShape
from recscale.models.ease import EASE
from recscale.models.ncf import GMF, GMFConfig
from recscale.models.popularity import Popularity
from recscale.ranking import RunningTopK, top_k
from recscale.recommend import recommend_frame
from recscale.training.run import sparse_tensor
from tests.helpers import synthetic_raw


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 5), n=st.integers(1, 40), k=st.integers(1, 45), width=st.integers(1, 41),
       levels=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_the_running_top_k_of_blocks_is_the_top_k_of_the_row(rows, n, k, width, levels, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, n), generator=g).float()  # few levels: ties everywhere
    scores[torch.rand(rows, n, generator=g) < 0.1] = float("-inf")
    scores[torch.rand(rows, n, generator=g) < 0.05] = float("nan")
    relevant = torch.rand(rows, n, generator=g) < 0.3
    running = RunningTopK(min(k, n))
    finite = torch.nan_to_num(scores, nan=float("-inf"))  # what the caller hands it (top_k does the same)
    for start in range(0, n, width):
        running.add(finite[:, start:start + width], relevant[:, start:start + width], start)
    expected = top_k(scores, relevant, k)
    assert torch.equal(running.index, expected)
    assert torch.equal(running.relevant, torch.gather(relevant, 1, expected))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """protocol -> a small prepared dataset (120 users, 90 items) to rank in blocks of a few items."""
    raw = synthetic_raw(n_users=120, n_items=90, per_user=18, seed=3)
    out = {}
    for protocol in ("random", "vae"):
        path = tmp_path_factory.mktemp("blocks") / protocol
        prepare(raw, PrepareConfig(protocol=protocol, seed=0, heldout_users=30 if protocol == "vae" else None), path)
        out[protocol] = PreparedDataset(path)
    return out


def _exact_models(data: PreparedDataset):
    """Models whose scores are exact in float32 whatever the order of their sums (integer-valued
    weights): blocked and whole-catalog scoring then agree to the bit, so every difference would be
    the ranking's. Popularity ties massively."""
    shape = DataShape(data.n_users, data.n_items)
    g = torch.Generator().manual_seed(0)
    popularity = Popularity(shape)
    popularity.fit(sparse_tensor(data.user_items("train")))
    ease = EASE(shape)
    ease.weights = torch.randint(-2, 3, (data.n_items, data.n_items), generator=g).float()
    gmf = GMF(shape, GMFConfig(factors=4))
    with torch.no_grad():
        for parameter in gmf.parameters():
            parameter.copy_(torch.randint(-1, 2, parameter.shape, generator=g).float())
    return {"popularity": popularity, "ease": ease, "gmf": gmf}


BOUND = 4 * 16 * 7  # bytes: a block of 16 users x 7 items


def _whole_rows(model, data, split):
    """The slow reference: each evaluated user's metrics from the whole row of scores at once."""
    users, inputs, masked, target = evaluation_sets(data, split)
    history = torch.from_numpy(inputs[users].toarray())
    scores = model.score(torch.from_numpy(users), history if model.needs_history else None).float()
    scores = scores.masked_fill(torch.from_numpy(masked[users].toarray()) > 0, float("-inf"))
    return users, per_user_metrics(scores, torch.from_numpy(target[users].toarray()) > 0, (1, 5, 20))


@pytest.mark.parametrize("protocol", ["random", "vae"])
def test_evaluation_in_blocks_equals_the_whole_rows_ties_included(tiny, protocol):
    data = tiny[protocol]
    for name, model in _exact_models(data).items():
        if protocol == "vae" and model.fold_in_modules():
            continue  # vae's test users are absent from training: folded in by steps (tests/models/test_foldin.py)
        users, expected = _whole_rows(model, data, "test")
        whole, blocked = {}, {}
        one = evaluate(model, data, "test", ks=(1, 5, 20), batch_size=16, per_user=whole, beyond=True)
        many = evaluate(model, data, "test", ks=(1, 5, 20), batch_size=16, per_user=blocked, beyond=True,
                        block_bytes=BOUND)
        assert many == one, name
        np.testing.assert_array_equal(whole["user"], users)
        for column in expected:
            np.testing.assert_array_equal(whole[column], expected[column].numpy(), err_msg=f"{name} {column}")
            np.testing.assert_array_equal(blocked[column], expected[column].numpy(), err_msg=f"{name} {column}")
        assert one["hr@20"] < 1.0, name  # some users' first relevant item lies beyond the top K (second pass)


def test_no_block_of_scores_exceeds_the_bound_and_the_model_never_scores_the_catalog(tiny, monkeypatch):
    data = tiny["random"]
    model = _exact_models(data)["gmf"]
    shapes = []
    inner = model.catalog_scorer

    def watched(users, history):
        block = inner(users, history)

        def scored(items):
            out = block(items)
            shapes.append(tuple(out.shape))
            return out
        return scored

    monkeypatch.setattr(model, "catalog_scorer", watched)
    monkeypatch.setattr(model, "score", lambda *a, **k: pytest.fail("scored the whole catalog"))
    evaluate(model, data, "test", ks=(5,), batch_size=16, block_bytes=BOUND)
    assert shapes and max(rows * cols * 4 for rows, cols in shapes) <= BOUND
    assert sum(cols for rows, cols in shapes) > data.n_items  # several batches, each in several blocks


@pytest.mark.parametrize("protocol", ["random", "vae"])
def test_recommendations_in_blocks_equal_the_whole_rows(tiny, protocol):
    from recscale.recommend import model_inputs
    data = tiny[protocol]
    users = np.arange(data.n_users)
    inputs, seen = model_inputs(data)
    popularity = torch.from_numpy(data.item_counts()).float()
    for name, model in _exact_models(data).items():
        if protocol == "vae" and model.fold_in_modules():
            continue  # its users absent from training are folded in by steps (tests/models/test_foldin.py)
        empty = torch.from_numpy(np.diff(inputs.indptr) == 0)  # nothing to go on: the popular fallback
        got = recommend_frame(model, data, users, 12, batch_size=16, block_bytes=BOUND)
        assert got.equals(recommend_frame(model, data, users, 12, batch_size=16)), name
        history = torch.from_numpy(inputs.toarray()) if model.needs_history else None
        scores = torch.where(empty[:, None], popularity, model.score(torch.from_numpy(users), history).float())
        scores = scores.masked_fill(torch.from_numpy(seen.toarray()) > 0, float("-inf"))
        top = top_k(scores, torch.zeros_like(scores, dtype=torch.bool), 12)  # (U, 12) the tie rule, whole rows
        finite = torch.isfinite(torch.gather(scores, 1, top))
        expected = data.original_item_ids()[top[finite].numpy()]
        np.testing.assert_array_equal(got["item"].to_numpy(), expected, err_msg=name)


def test_a_history_model_ranks_from_a_sparse_history_as_from_the_dense_one(tiny):
    """Mult-VAE's first layer reads a sparse history through its sparse path in blocked ranking:
    the same metrics up to float rounding."""
    from recscale.models.vae import MultVAE, MultVAEConfig
    data = tiny["vae"]
    torch.manual_seed(0)
    model = MultVAE(DataShape(data.n_users, data.n_items), MultVAEConfig(hidden=(16,), latent=8))
    expected = evaluate(model, data, "test", ks=(5, 20), batch_size=16)
    got = evaluate(model, data, "test", ks=(5, 20), batch_size=16, block_bytes=BOUND)
    for metric in ("ndcg@20", "recall@20", "mrr", "coverage@5"):
        assert got[metric] == pytest.approx(expected[metric], abs=1e-6), metric


def test_a_relevant_score_rounded_otherwise_outside_the_blocks_is_counted_again(tiny, monkeypatch):
    """The first relevant rank beyond the top K is counted against the best relevant score as a
    call on the relevant items alone gives it; where that call rounds otherwise than the blocks
    (simulated here), the rows are counted again against the blocks' own score: the same MRR."""
    data = tiny["random"]
    model = _exact_models(data)["ease"]
    expected = evaluate(model, data, "test", ks=(1, 5), batch_size=16, block_bytes=BOUND)
    inner = model.catalog_scorer
    calls = []

    def rounded_otherwise(users, history):
        block = inner(users, history)

        def scored(items):
            out = block(items)
            if torch.is_tensor(items):  # the relevant items alone: another kernel, another rounding
                calls.append(items.numel())
                out = out + 0.25
            return out
        return scored

    monkeypatch.setattr(model, "catalog_scorer", rounded_otherwise)
    got = evaluate(model, data, "test", ks=(1, 5), batch_size=16, block_bytes=BOUND)
    assert calls and got == expected

import torch

from recscale.data.dataset.keys import is_positive, positive_keys
from recscale.data.loading.sampling import NegativeSampler
from recscale.data.prepare.negatives import sample_distinct_negatives


def _setup(n_users=50, n_items=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    users = torch.randint(n_users, (600,), generator=g)
    items = torch.randint(n_items, (600,), generator=g)
    return users, items, positive_keys(users, items, n_items)


def test_is_positive_matches_a_python_set():
    users, items, keys = _setup()
    truth = set(zip(users.tolist(), items.tolist()))
    qu, qi = torch.randint(50, (2000,)), torch.randint(40, (2000,))
    expected = [(u, i) in truth for u, i in zip(qu.tolist(), qi.tolist())]
    assert is_positive(keys, qu, qi, 40).tolist() == expected


def test_training_negatives_are_never_positives_and_are_reproducible():
    users, items, keys = _setup()
    sampler = NegativeSampler(users, items, 50, 40)
    query = users.repeat(4)
    a = sampler.sample(query, torch.Generator().manual_seed(1))
    b = sampler.sample(query, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert not is_positive(keys, query, a, 40).any()


def test_training_negatives_are_uniform_over_each_users_unseen_items():
    # user 0 has 37 of 40 items, user 1 has 1, user 2 none: every unseen item is equally likely,
    # however few are left (no rejection loop whose cost grows as they get fewer)
    users = torch.tensor([0] * 37 + [1])
    items = torch.cat([torch.arange(37), torch.tensor([5])])
    sampler = NegativeSampler(users, items, 3, 40)
    assert sampler.free.tolist() == [3, 39, 40]
    draws = 30_000
    for user, unseen in ((0, [37, 38, 39]), (1, [i for i in range(40) if i != 5]), (2, list(range(40)))):
        got = sampler.sample(torch.full((draws,), user), torch.Generator().manual_seed(user))
        counts = torch.bincount(got, minlength=40)
        assert set(torch.nonzero(counts).squeeze(1).tolist()) == set(unseen)
        expected = draws / len(unseen)
        chi2 = float(((counts[unseen].double() - expected) ** 2 / expected).sum())
        assert chi2 < len(unseen) + 6 * (2 * len(unseen)) ** 0.5, (user, chi2)  # ~6 sigma of chi-square


def test_distinct_negatives_even_for_dense_users():
    users, items, keys = _setup()
    # user 0 has every item but 12 of them
    dense_items = torch.arange(28)
    keys = torch.unique(torch.cat([keys[keys // 40 != 0], dense_items]))
    out = sample_distinct_negatives(keys, torch.arange(50), 40, 12, torch.Generator().manual_seed(0))
    assert out.shape == (50, 12)
    assert all(len(set(r)) == 12 for r in out.tolist())
    assert sorted(out[0].tolist()) == list(range(28, 40))
    assert not is_positive(keys, torch.arange(50)[:, None].expand_as(out), out, 40).any()

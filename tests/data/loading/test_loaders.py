"""Loaders: coverage and equal batch counts per rank, reproducible epochs, correct batch content."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recscale.data.dataset.keys import is_positive
from recscale.data.loading.batch import PairBatch, multi_hot_batch
from recscale.data.loading.memory import PairLoader, TabularLoader, TensorLoader, UserRowLoader, csr_rows_dense
from recscale.data.loading.prefetch import Prefetcher


def _pair_loader(n, batch, rank, world, drop_last, seed=0):
    ids = torch.arange(n)
    return TensorLoader({"users": ids, "items": ids, "labels": ids.float()}, PairBatch, batch, seed=seed,
                        drop_last=drop_last, rank=rank, world_size=world)


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_cover_each_example_once_with_equal_batch_counts(world, drop_last):
    n, batch = 1003, 17
    loaders = [_pair_loader(n, batch, r, world, drop_last) for r in range(world)]
    seen = []
    counts = set()
    for loader in loaders:
        loader.set_epoch(3)
        batches = list(loader)
        assert len(batches) == len(loader)
        counts.add(len(batches))
        seen += torch.cat([b.users for b in batches]).tolist()
    assert len(counts) == 1  # every rank yields the same number of batches
    values, multiplicity = np.unique(seen, return_counts=True)
    if drop_last:
        assert multiplicity.max() == 1 and n - len(seen) < world * batch
    else:
        assert set(values) == set(range(n))
        assert multiplicity.sum() - n == (-n) % world  # only the wrap-around padding repeats


def test_epochs_are_reproducible_and_differ():
    a, b = _pair_loader(100, 10, 0, 1, False), _pair_loader(100, 10, 0, 1, False)
    first = [x.users for x in a]
    assert all(torch.equal(x, y.users) for x, y in zip(first, b))
    a.set_epoch(1)
    assert not torch.equal(torch.cat(first), torch.cat([x.users for x in a]))
    assert sorted(torch.cat(first).tolist()) == list(range(100))


@pytest.mark.parametrize("world", [1, 3, 8])
def test_pair_loader_negatives_and_positive_coverage(world):
    g = torch.Generator().manual_seed(0)
    users = torch.randint(30, (400,), generator=g)
    items = torch.randint(50, (400,), generator=g)
    keep = torch.unique(users * 50 + items)
    users, items = keep // 50, keep % 50
    positives = []
    counts = set()
    for rank in range(world):
        loader = PairLoader(users, items, 50, batch_size=64, negatives=4, seed=1, rank=rank, world_size=world)
        batches = list(loader)
        counts.add(len(batches))
        u = torch.cat([b.users for b in batches])
        i = torch.cat([b.items for b in batches])
        y = torch.cat([b.labels for b in batches])
        assert (y == 0).sum() == 4 * (y == 1).sum()
        assert not is_positive(loader.sampler.keys, u[y == 0], i[y == 0], 50).any()
        assert is_positive(loader.sampler.keys, u[y == 1], i[y == 1], 50).all()
        positives += (u[y == 1] * 50 + i[y == 1]).tolist()
    assert len(counts) == 1
    assert set(positives) == set(keep.tolist())


def test_user_rows_are_the_csr_rows():
    matrix = sp.random(40, 25, density=0.2, format="csr", random_state=0, dtype=np.float32)
    rows = torch.tensor([3, 0, 39, 3, 17])
    dense = csr_rows_dense(torch.from_numpy(matrix.indptr.astype(np.int64)),
                           torch.from_numpy(matrix.indices.astype(np.int64)),
                           torch.from_numpy(matrix.data), rows, 25)
    assert np.array_equal(dense.numpy(), matrix[rows.numpy()].toarray())
    loader = UserRowLoader(matrix, torch.arange(40), batch_size=16, seed=2)
    for batch in loader:
        assert np.array_equal(batch.rows.numpy(), matrix[batch.users.numpy()].toarray())


def test_multi_hot_batches_feed_embedding_bag():
    lists = [[0, 2], [], [1], [2, 1, 0]]
    values = torch.tensor([v for row in lists for v in row])
    lengths = torch.tensor([len(r) for r in lists])
    offsets = torch.cumsum(lengths, 0) - lengths
    items = torch.tensor([3, 1, 0, 0])
    vals, offs = multi_hot_batch(values, offsets, lengths, items)
    assert vals.tolist() == [2, 1, 0, 0, 2, 0, 2] and offs.tolist() == [0, 3, 3, 5]
    bag = torch.nn.EmbeddingBag(3, 4, mode="mean")
    out = bag(vals, offs)
    assert torch.allclose(out[2], bag.weight[[0, 2]].mean(0)) and torch.all(out[1] == 0)
    loader = TabularLoader(items, items, torch.ones(4), values, offsets, batch_size=4, shuffle=False)
    batch = next(iter(loader))
    assert batch.genre_values.tolist() == vals.tolist()


def test_prefetcher_yields_the_same_batches_and_raises_loader_errors():
    loader = _pair_loader(50, 7, 0, 1, False)
    direct = [b.users for b in loader]
    fetched = [b.users for b in Prefetcher(loader, "cpu")]
    assert all(torch.equal(a, b) for a, b in zip(direct, fetched)) and len(direct) == len(fetched)

    class Broken:
        def __iter__(self):
            yield from ()
            raise RuntimeError("bad shard")

    with pytest.raises(RuntimeError, match="bad shard"):
        list(Prefetcher(Broken(), "cpu"))

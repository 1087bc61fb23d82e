"""Next-item batches (data/loading/sequences.py): the vectorized gather equals a per-user
reference, padding sits on the left with no target after it, ranks get equal batch counts and
cover every user, and an epoch is a function of (seed, epoch) alone."""

from __future__ import annotations

import numpy as np
import torch

from recscale.data.loading.batch import PAD
from recscale.data.loading.sequences import SequenceLoader, last_items


def _sequences(rng, n_users=23):
    lengths = rng.integers(0, 12, size=n_users)
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return indptr, rng.integers(0, 50, size=int(indptr[-1])).astype(np.int32)


def _reference(seq: list[int], max_len: int) -> tuple[list[int], list[int]]:
    window = seq[-(max_len + 1):]
    inputs, targets = window[:-1], window[1:]
    pad = max_len - len(inputs)
    return [PAD] * pad + inputs, [PAD] * pad + targets


def test_batches_equal_the_per_user_reference_and_cover_every_user():
    rng = np.random.default_rng(0)
    indptr, items = _sequences(rng)
    for max_len in (1, 4, 20):
        loader = SequenceLoader(indptr, items, batch_size=5, max_len=max_len, seed=3)
        seen = []
        for batch in loader:
            assert batch.inputs.shape == batch.targets.shape == (len(batch), max_len)
            for u, x, y in zip(batch.users.tolist(), batch.inputs.tolist(), batch.targets.tolist()):
                assert (x, y) == _reference(items[indptr[u]:indptr[u + 1]].tolist(), max_len), (u, max_len)
            seen += batch.users.tolist()
        assert sorted(seen) == np.flatnonzero(np.diff(indptr) >= 2).tolist()  # users with a target, once each


def test_last_items_right_aligns():
    indptr = torch.tensor([0, 3, 3, 8])
    items = torch.arange(8)
    got = last_items(indptr, items, torch.tensor([0, 1, 2]), 4)
    assert got.tolist() == [[PAD, 0, 1, 2], [PAD] * 4, [4, 5, 6, 7]]


def test_ranks_share_an_epoch_evenly_and_epochs_repeat():
    indptr, items = _sequences(np.random.default_rng(1), n_users=41)
    ranks = [SequenceLoader(indptr, items, 4, 6, seed=5, rank=r, world_size=3) for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    users = set()
    for r in ranks:
        r.set_epoch(2)
        users |= {u for b in r for u in b.users.tolist()}
    assert users == set(np.flatnonzero(np.diff(indptr) >= 2).tolist())
    a, b = (SequenceLoader(indptr, items, 4, 6, seed=5) for _ in range(2))
    a.set_epoch(1)
    b.set_epoch(1, start_batch=2)  # resuming mid-epoch gives the same batches from there on
    assert [x.users.tolist() for x in list(a)[2:]] == [x.users.tolist() for x in b]
    b.set_epoch(1)
    epoch_1 = [x.users.tolist() for x in b]
    a.set_epoch(0)
    assert [x.users.tolist() for x in a] != epoch_1

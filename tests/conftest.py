"""Shared fixtures. Prepared datasets are built once per session from the embedded MovieLens."""

from __future__ import annotations

import pytest

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.sources import load_dataset
from recscale.data.prepare.memory import prepare


@pytest.fixture(scope="session")
def movielens() -> RawDataset:
    return load_dataset("ml-latest-small")


@pytest.fixture(scope="session")
def prepared(movielens, tmp_path_factory):
    """protocol -> PreparedDataset of the embedded data with seed 0."""
    cache: dict[str, PreparedDataset] = {}

    def get(protocol: str) -> PreparedDataset:
        if protocol not in cache:
            out = tmp_path_factory.mktemp("prepared") / protocol
            prepare(movielens, PrepareConfig(protocol=protocol, seed=0), out)
            cache[protocol] = PreparedDataset(out)
        return cache[protocol]

    return get



@pytest.fixture(scope="session")
def popularity(prepared):
    """protocol -> (popularity model fitted on the embedded data's training split, its dataset)."""
    from recscale.models.base import DataShape
    from recscale.models.popularity import Popularity
    from recscale.training.run import sparse_tensor

    def get(protocol: str):
        data = prepared(protocol)
        model = Popularity(DataShape(data.n_users, data.n_items))
        model.fit(sparse_tensor(data.user_items("train")))
        return model, data

    return get


@pytest.fixture(scope="session")
def small_ncf(tmp_path_factory):
    """A small synthetic ncf dataset (300 users, 400 items, 12,000 interactions: 15 steps of 4,096
    pairs an epoch) for the tests that start process groups, where the embedded data's epochs
    would only add time."""
    from tests.helpers import synthetic_raw
    out = tmp_path_factory.mktemp("small-ncf") / "data"
    prepare(synthetic_raw(n_users=300, n_items=400, per_user=40), PrepareConfig(protocol="ncf"), out)
    return PreparedDataset(out)

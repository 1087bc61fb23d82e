"""Shared fixtures. Prepared datasets are built once per session from the embedded MovieLens."""

from __future__ import annotations

import numpy as np
import polars as pl
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


def write_ratings(path, rows, header="userId,movieId,rating,timestamp"):
    path.write_text(header + "\n" + "".join(line + "\n" for line in rows))
    return path


def synthetic_raw(n_users=40, n_items=60, per_user=20, seed=0) -> RawDataset:
    """A small random interaction log with distinct timestamps per user."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=per_user, replace=False)
        users += [u + 100] * per_user
        items += list(chosen + 1000)
    frame = pl.DataFrame({"user": users, "item": items,
                          "rating": rng.integers(1, 6, len(users)).astype(np.float32),
                          "timestamp": rng.permutation(len(users)).astype(np.int64)})
    return RawDataset("synthetic", frame, None, ())


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


def kill_a_worker_mid_second_epoch(agent, run) -> None:
    """Wait until the torchrun group `agent` (a `recscale train --nproc` process) wrote a checkpoint
    inside the run's second epoch, then SIGKILL one of its workers."""
    import os
    import signal
    import subprocess
    import time

    import torch
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]
            if state["epoch"] >= 1 and state["position"] > 0:
                break
        except Exception:  # not written yet, or being replaced
            pass
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)

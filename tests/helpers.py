"""What several test modules share (fixtures live in conftest.py): paths, small inputs, and the
subprocess tools of the interruption tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

from recscale.data.ingest.raw import RawDataset

ROOT = Path(__file__).resolve().parents[1]  # the checkout
SHARED = ROOT.parent / "shared"             # shared/ beside it: DESIGN.md, data/


def write_ratings(path, rows, header="userId,movieId,rating,timestamp"):
    path.write_text(header + "\n" + "".join(line + "\n" for line in rows))
    return path


def growing_logs(root, text_ids: bool = False):
    """(yesterday's log, today's): today holds yesterday's rows but one user's, and new users and items."""
    rng = np.random.default_rng(1)
    rows = [(u, i, float(rng.integers(1, 6)), int(t)) for t, (u, i) in
            enumerate(zip(rng.integers(0, 50, 900), rng.integers(0, 70, 900)))]
    name = (lambda kind, n: f"{kind}{n:03d}") if text_ids else (lambda kind, n: str(n * 7 + 3))
    lines = lambda rs: "userId,movieId,rating,timestamp\n" + "\n".join(  # noqa: E731
        f"{name('u', u)},{name('i', i)},{r},{t}" for u, i, r, t in rs) + "\n"
    yesterday = [r for r in rows if r[0] < 40 and r[1] < 55]
    today = [r for r in rows if r[0] != 5]  # user 5 is gone today; users 40.. and items 55.. are new
    (root / "yesterday.csv").write_text(lines(yesterday))
    (root / "today.csv").write_text(lines(today))
    return root / "yesterday.csv", root / "today.csv"


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


def train_process(args, **kwargs) -> subprocess.Popen:
    """`recscale train ARGS` in a child process, its output captured."""
    return subprocess.Popen([sys.executable, "-m", "recscale", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def checkpoint_position(run):
    """The train_state of the run's `last` checkpoint (None: not written yet; the rename is atomic,
    so it is never half-written)."""
    try:
        return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["train_state"]
    except Exception:
        return None


def wait_for_mid_epoch_checkpoint(run, timeout: float = 120) -> None:
    """Until the run wrote a checkpoint inside its second epoch (or `timeout` seconds passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = checkpoint_position(run)
        if state and state["epoch"] >= 1 and state["position"] > 0:
            return
        time.sleep(0.05)


def kill_mid_epoch(args, run, sig):
    """Start training, wait for a checkpoint written inside an epoch, then send `sig`."""
    proc = train_process(args)
    wait_for_mid_epoch_checkpoint(run)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, err


def kill_a_worker_mid_second_epoch(agent, run) -> None:
    """Wait until the torchrun group `agent` (a `recscale train --nproc` process) wrote a checkpoint
    inside the run's second epoch, then SIGKILL one of its workers."""
    wait_for_mid_epoch_checkpoint(run, timeout=240)
    workers = subprocess.run(["pgrep", "-P", str(agent.pid)], capture_output=True, text=True).stdout.split()
    assert workers, "no worker processes found"
    os.kill(int(workers[-1]), signal.SIGKILL)

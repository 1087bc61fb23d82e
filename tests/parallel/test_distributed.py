"""Data parallelism: 2 gloo processes on CPU against 1 process."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from recscale.config.layers import build_run_config
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.loading.batch import PairBatch, UserBatch
from recscale.data.prepare.memory import prepare
from recscale.models.base import StepSchedule
from recscale.parallel import distributed
from recscale.training.build import build_model, build_trainer
from tests.helpers import kill_a_worker_mid_second_epoch, synthetic_raw

GLOBAL_BATCH = 64


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _global_batch(model_name: str, data: PreparedDataset):
    g = torch.Generator().manual_seed(123)
    if model_name == "neumf":
        return PairBatch(torch.randint(data.n_users, (GLOBAL_BATCH,), generator=g),
                         torch.randint(data.n_items, (GLOBAL_BATCH,), generator=g),
                         torch.randint(2, (GLOBAL_BATCH,), generator=g).float()), None
    rows = (torch.rand(GLOBAL_BATCH, data.n_items, generator=g) < 0.1).float()
    rows[:, 0] = 1
    return UserBatch(torch.arange(GLOBAL_BATCH), rows), torch.randn(GLOBAL_BATCH, 200, generator=g)


def one_step(rank: int, world: int, port: int, data_dir: str, model_name: str, out: str) -> None:
    """One SGD step on this rank's share of a fixed global batch; saves the parameters."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    info, device = distributed.from_env(), torch.device("cpu")
    distributed.init(info, device)
    data = PreparedDataset(data_dir)
    params = {"embedding_gradients": "dense"} if model_name == "neumf" else {"dropout": 0.0}
    cfg = build_run_config({"data": data_dir, "model": model_name, "batch_size": GLOBAL_BATCH, "optimizer": "sgd",
                            "lr": 0.5, "device": "cpu"})
    torch.manual_seed(0)
    model, _ = build_model(cfg, params, data, world)
    trainer = build_trainer(cfg, model, data, device, None, info)
    batch, eps = _global_batch(model_name, data)
    part = slice(rank * GLOBAL_BATCH // world, (rank + 1) * GLOBAL_BATCH // world)
    local = type(batch)(*[t[part] for t in (batch.users, batch.items, batch.labels)]) if model_name == "neumf" \
        else UserBatch(batch.users[part], batch.rows[part])
    if eps is not None:  # the same noise per example as the single process draws
        trainer.schedule = StepSchedule(lambda step: {"beta": 0.2, "eps": eps[part]})
    trainer.train_step(local)
    torch.save(model.state_dict(), out)
    distributed.destroy()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    raw = synthetic_raw(n_users=80, n_items=120, per_user=20)
    prepare(raw, PrepareConfig(protocol="ncf", test_negatives=10), root / "ncf")
    prepare(raw, PrepareConfig(protocol="vae", min_rating=1, heldout_users=8), root / "vae")
    return root


@pytest.mark.slow
@pytest.mark.parametrize("model_name, protocol", [("neumf", "ncf"), ("multvae", "vae")])
def test_two_ranks_with_half_batches_equal_one_process_with_the_whole(datasets, tmp_path, model_name, protocol):
    data_dir = str(datasets / protocol)
    port = _free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=one_step, args=(r, 2, port, data_dir, model_name, str(tmp_path / f"r{r}.pt")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    single = ctx.Process(target=one_step, args=(0, 1, _free_port(), data_dir, model_name, str(tmp_path / "single.pt")))
    single.start()
    single.join(120)
    assert single.exitcode == 0
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(2)]
    one = torch.load(tmp_path / "single.pt")
    start_cfg = build_run_config({"data": data_dir, "model": model_name, "batch_size": GLOBAL_BATCH})
    start = build_model(start_cfg, {"embedding_gradients": "dense"} if model_name == "neumf" else {"dropout": 0.0},
                        PreparedDataset(data_dir))[0]
    moved = False
    for name, value in one.items():
        assert torch.equal(ranks[0][name], ranks[1][name])  # replicas stay identical
        assert torch.allclose(ranks[0][name], value, atol=1e-6, rtol=1e-5), name
        moved |= not torch.equal(value, start.state_dict()[name]) if name in start.state_dict() else False
    assert moved


def _train(args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "recscale", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


TRAIN = ["--model", "neumf", "--epochs", "2", "--batch-size", "8192", "--device", "cpu", "--seed", "1"]


@pytest.mark.slow
def test_two_processes_reach_the_quality_of_one_on_the_embedded_data(prepared, tmp_path):
    data = str(prepared("ncf").root)
    quick = [*TRAIN, "--epochs", "1"]  # one epoch: enough to compare the two runs, half the time
    one = _train(["--data", data, *quick, "--out", str(tmp_path / "one")])
    assert one.wait(300) == 0, one.stderr.read()
    two = _train(["--data", data, *quick, "--nproc", "2", "--out", str(tmp_path / "two")])
    assert two.wait(300) == 0, two.stderr.read()
    hr_one, hr_two = _records(tmp_path / "one")[-1]["hr@10"], _records(tmp_path / "two")[-1]["hr@10"]
    assert abs(hr_one - hr_two) < 0.04, (hr_one, hr_two)
    assert _records(tmp_path / "two")[-1]["users"] == 671  # the ranks' shards summed to every user


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_the_run_resumes(small_ncf, tmp_path):
    data = str(small_ncf.root)
    run = tmp_path / "run"
    # three epochs of 15 steps (4,096 pairs, 2,048 per rank): the kill lands in the second
    train = [*TRAIN, "--epochs", "3", "--batch-size", "4096"]
    agent = _train(["--data", data, *train, "--nproc", "2", "--max-restarts", "1", "--checkpoint-every", "3",
                    "--out", str(run)])
    kill_a_worker_mid_second_epoch(agent, run)
    _, err = agent.communicate(timeout=300)
    assert agent.returncode == 0, "\n".join(l for l in err.splitlines() if "Error" in l or "error" in l)[-3000:]
    records = _records(run)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    reference = _train(["--data", data, *train, "--nproc", "2", "--out", str(tmp_path / "ref")])
    assert reference.wait(300) == 0
    assert abs(records[-1]["hr@10"] - _records(tmp_path / "ref")[-1]["hr@10"]) < 0.02

"""Embedding tables sharded across gloo workers with TorchRec (`--embeddings sharded`) against
replicated (DDP) training: same steps, same quality, only the own shards held, exact resume."""

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
from recscale.data.loading.batch import PairBatch
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.models.tables import TableSpec, init_rows
from recscale.parallel import distributed, sharding
from recscale.training.build import build_model, build_trainer, place
from recscale.training.run import load_run
from tests.helpers import kill_a_worker_mid_second_epoch, synthetic_raw

BATCH = 60


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def steps(rank, world, port, data_dir, mode, optimizer, lr, n_steps, out, placement="auto"):
    """n_steps on this rank's part of fixed global batches; rank 0 saves every parameter (the
    tables read back through the model's own lookup, which gathers the shards) and every rank
    its local table bytes."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    info, device = distributed.from_env(), torch.device("cpu")
    distributed.init(info, device)
    data = PreparedDataset(data_dir)
    cfg = build_run_config({"data": data_dir, "model": "neumf", "batch_size": BATCH, "optimizer": optimizer,
                            "momentum": 0.0, "lr": lr, "device": "cpu", "embeddings": mode, "sharding": placement})
    torch.manual_seed(0)
    model, _ = build_model(cfg, {"embedding_gradients": "dense", "factors": 8, "layers": (16, 8)}, data, world,
                           for_training=True)
    place(model, device)
    trainer = build_trainer(cfg, model, data, device, None, info)
    g = torch.Generator().manual_seed(7)
    part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    for _ in range(n_steps):
        u, i = torch.randint(data.n_users, (BATCH,), generator=g), torch.randint(data.n_items, (BATCH,), generator=g)
        y = torch.randint(2, (BATCH,), generator=g).float()
        trainer.train_step(PairBatch(u[part], i[part], y[part]))
    with torch.no_grad():
        users = model.tables({"users": torch.arange(data.n_users), "items": torch.zeros(data.n_users, dtype=torch.long)})
        items = model.tables({"users": torch.zeros(data.n_items, dtype=torch.long), "items": torch.arange(data.n_items)})
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("tables.")}
    state |= {f"tables.{k}": v for k, v in users.items() if k.endswith("user")}
    state |= {f"tables.{k}": v for k, v in items.items() if k.endswith("item")}
    if rank == 0:
        torch.save(state, out)
    local = sharding.local_table_sizes(model) if mode == "sharded" else None
    torch.save(local, f"{out}.rank{rank}")
    distributed.destroy()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded") / "ncf"
    prepare(synthetic_raw(n_users=90, n_items=70, per_user=15), PrepareConfig(protocol="ncf", test_negatives=10), root)
    return str(root)


def _initial_tables(data_dir, world) -> dict[str, torch.Tensor]:
    """The tables every run above starts from, built here as `steps` builds them (no workers)."""
    data = PreparedDataset(data_dir)
    cfg = build_run_config({"data": data_dir, "model": "neumf", "batch_size": BATCH, "device": "cpu"})
    torch.manual_seed(0)
    model, _ = build_model(cfg, {"embedding_gradients": "dense", "factors": 8, "layers": (16, 8)}, data, world,
                           for_training=True)
    return {f"tables.{name}": table.weight.detach().clone() for name, table in model.tables.items()}


def _run(world, mode, dataset, optimizer, lr, n_steps, out, placement="auto"):
    mp.spawn(steps, (world, _free_port(), dataset, mode, optimizer, lr, n_steps, str(out), placement), nprocs=world)
    return torch.load(out), [torch.load(f"{out}.rank{r}") for r in range(world)]


@pytest.mark.slow
@pytest.mark.parametrize("world, optimizer, lr, atol, placement", [(2, "sgd", 1.0, 1e-7, "column_wise"),
                                                                  (3, "adagrad", 0.05, 1e-6, "auto")])
def test_sharded_tables_take_the_steps_of_replicated_ones(dataset, tmp_path, world, optimizer, lr, atol, placement):
    """Same initial weights, same optimizer, same global batches: the same parameters after 4 steps
    (within float rounding: gradients are summed in another order)."""
    start = _initial_tables(dataset, world)
    replicated, _ = _run(world, "replicated", dataset, optimizer, lr, 4, tmp_path / "replicated.pt")
    sharded, local = _run(world, "sharded", dataset, optimizer, lr, 4, tmp_path / "sharded.pt", placement)
    for name, value in replicated.items():
        assert torch.allclose(sharded[name], value, atol=atol, rtol=0), (name, float((sharded[name] - value).abs().max()))
    assert all(not torch.equal(replicated[k], start[k]) for k in replicated if k.startswith("tables."))  # trained
    tables = {k.removeprefix("tables.") + ".weight": v.numel() * v.element_size()
              for k, v in replicated.items() if k.startswith("tables.")}
    for key, whole in tables.items():  # the shards partition each table: nothing replicated
        assert sum(sizes[key] for sizes in local) == whole, key
    assert max(sum(sizes.values()) for sizes in local) < sum(tables.values())  # no worker holds them all
    if placement == "column_wise":  # every table split across both workers
        assert all(sizes[key] > 0 for sizes in local for key in tables)


# ----------------------------------------------------------------------------- end to end (CLI, torchrun)

TRAIN = ["--model", "neumf", "--epochs", "2", "--batch-size", "4096", "--device", "cpu", "--seed", "1",
         "--optimizer", "adagrad", "--lr", "0.05", "--nproc", "2"]


def _train(args):
    return subprocess.Popen([sys.executable, "-m", "recscale", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _finish(proc, timeout=300):
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, "\n".join(l for l in err.splitlines() if "rror" in l)[-3000:]


@pytest.mark.slow
def test_sharded_training_reaches_ddp_quality_and_its_runs_evaluate(prepared, tmp_path):
    data = str(prepared("ncf").root)
    quick = [*TRAIN, "--epochs", "1"]  # one epoch: enough to compare the two runs, half the time
    _finish(_train(["--data", data, *quick, "--out", str(tmp_path / "ddp")]))
    _finish(_train(["--data", data, *quick, "--embeddings", "sharded", "--out", str(tmp_path / "sharded")]))
    ddp, shd = _records(tmp_path / "ddp")[-1], _records(tmp_path / "sharded")[-1]
    assert abs(ddp["hr@10"] - shd["hr@10"]) < 0.02, (ddp["hr@10"], shd["hr@10"])
    assert shd["users"] == ddp["users"] == 671  # every worker validated every user
    files = sorted(p.name for p in (tmp_path / "sharded" / "checkpoints").glob("last*.pt"))
    assert len(files) == 3 and "last.pt" in files  # the main file and one shard file per worker
    # evaluate gathers the shards in one process: the metric training reported for its best epoch
    best = max(_records(tmp_path / "sharded"), key=lambda r: r["hr@10"])
    loaded = load_run(tmp_path / "sharded", "cpu")
    from recscale.evaluation.protocols import evaluate
    assert evaluate(loaded.model, loaded.data, "valid")["hr@10"] == pytest.approx(best["hr@10"], abs=1e-9)


@pytest.mark.slow
def test_a_killed_sharded_run_resumes_exactly(small_ncf, tmp_path):
    # three epochs of 15 steps: the kill lands in the second, with a whole epoch to spare
    args = ["--data", str(small_ncf.root), *TRAIN, "--epochs", "3", "--embeddings", "sharded", "--checkpoint-every", "5"]
    agent = _train([*args, "--max-restarts", "1", "--out", str(tmp_path / "killed")])
    kill_a_worker_mid_second_epoch(agent, tmp_path / "killed")
    _finish(agent)
    _finish(_train([*args, "--out", str(tmp_path / "whole")]))
    killed = load_run(tmp_path / "killed", "cpu", "last").model.state_dict()
    whole = load_run(tmp_path / "whole", "cpu", "last").model.state_dict()
    for name, value in whole.items():
        assert torch.allclose(killed[name], value, atol=1e-6, rtol=0), name
    assert [r["epoch"] for r in _records(tmp_path / "killed")] == [0, 1, 2]


# ----------------------------------------------------------------------------- in one process


def test_tables_draw_any_row_range_as_the_whole_table_does():
    spec = TableSpec("users", 200_000, 6)
    whole = init_rows(3, 1, spec, slice(0, spec.rows))
    assert torch.equal(init_rows(3, 1, spec, slice(65_000, 140_000), slice(2, 5)), whole[65_000:140_000, 2:5])
    assert float(whole.std()) == pytest.approx(0.01, rel=0.01)
    assert not torch.equal(init_rows(3, 2, spec, slice(0, 10)), whole[:10])  # tables differ


def test_old_checkpoints_with_ungrouped_table_keys_still_load(prepared):
    from recscale.models.ncf import NeuMF
    from recscale.training.build import data_shape
    model = NeuMF(data_shape(prepared("ncf")))
    old = {k.replace("tables.", ""): v + 1 for k, v in model.state_dict().items()}
    model.load_state_dict(old)
    assert torch.equal(model.tables["gmf_user"].weight, old["gmf_user.weight"])


@pytest.mark.parametrize("settings, params, message", [
    ({"optimizer": "lars"}, {}, "--optimizer lars"),
    ({"precision": "fp16"}, {}, "--precision fp16"),
    ({"sharding": "row_wise"}, {}, "CUDA only"),
    ({"optimizer": "sgd"}, {}, "--momentum 0.9"),
    ({"table_optimizer": "adam"}, {}, "no fused adam on cpu"),
    ({}, {}, "2 or more workers"),
])
def test_sharded_settings_that_cannot_work_are_one_line_errors(prepared, settings, params, message):
    data = prepared("ncf")
    cfg = build_run_config({"data": str(data.root), "model": "neumf", "embeddings": "sharded", **settings})
    model, _ = build_model(cfg, params, data)
    with pytest.raises(RecscaleError, match=message) as info:
        sharding.check(model, cfg.optim, cfg.system, torch.device("cpu"), 2)
    assert "\n" not in str(info.value)


def test_models_without_tables_and_odd_widths_are_refused(prepared):
    data = prepared("ncf")
    cfg = build_run_config({"data": str(data.root), "model": "embedding-mlp", "embeddings": "sharded"})
    model, _ = build_model(cfg, {"user_dim": 30, "item_dim": 32}, data)
    with pytest.raises(RecscaleError, match="table user is 30 wide.*user_dim=32"):
        sharding.check(model, cfg.optim, cfg.system, torch.device("cpu"), 2)
    vae = prepared("vae")
    cfg = build_run_config({"data": str(vae.root), "model": "multvae", "embeddings": "sharded"})
    with pytest.raises(RecscaleError, match="no embedding tables"):
        sharding.check(build_model(cfg, {}, vae)[0], cfg.optim, cfg.system, torch.device("cpu"), 2)


def test_auto_table_optimizer_follows_the_run_where_fbgemm_has_it():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert sharding.table_optimizer("adagrad", "auto", cpu) == "adagrad"
    assert sharding.table_optimizer("adam", "auto", cpu) == "rowwise_adagrad"
    assert sharding.table_optimizer("adam", "auto", cuda) == "adam"
    assert sharding.table_optimizer("rmsprop", "auto", cpu) == "rowwise_adagrad"

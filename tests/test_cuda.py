"""What only a GPU can show, marked `cuda` (`pytest -m cuda`; scripts/gpu-check.sh runs them on the
GPU machine). Without a GPU they are skipped, so CI is unchanged. RECSCALE_CUDA_TEST_DEVICE=cpu
runs the very same tests on the CPU: the device check's dry run (`scripts/gpu-check.sh --dry-run`,
itself run by `make test`) does, so that they are known to work before any GPU time is spent.
They use only what torch 2.11 has as well as 2.13."""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS, before CUDA starts

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from recscale import api  # noqa: E402
from recscale.config.prepare import PrepareConfig  # noqa: E402
from recscale.data.dataset.prepared import PreparedDataset  # noqa: E402
from recscale.data.loading.prefetch import Prefetcher  # noqa: E402
from recscale.data.prepare.memory import prepare  # noqa: E402
from recscale.evaluation.metrics import per_user_metrics  # noqa: E402
from recscale.training.build import resolve_run_config, seeded_trainer  # noqa: E402
from tests.helpers import synthetic_raw  # noqa: E402

DEVICE = os.environ.get("RECSCALE_CUDA_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="no GPU")]

# every step-trained model and the protocol of its batches
STEP_MODELS = {"neumf": "ncf", "gmf": "ncf", "mlp": "ncf", "embedding-mlp": "ncf", "multvae": "vae",
               "multdae": "vae", "autoencoder": "vae"}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-data")
    raw = synthetic_raw(n_users=300, n_items=200, per_user=25)
    out = {}
    for protocol in ("ncf", "vae"):
        prepare(raw, PrepareConfig(protocol=protocol, heldout_users=30 if protocol == "vae" else None), root / protocol)
        out[protocol] = PreparedDataset(root / protocol)
    return out


def _trainer(data, model: str, device: str = DEVICE, **settings):
    cfg = resolve_run_config({"data": str(data.root), "model": model, "device": device, "progress": False,
                              "batch_size": 256 if STEP_MODELS[model] == "ncf" else 32, **settings})
    trainer = seeded_trainer(cfg, {}, data, torch.device(device))
    trainer.model.train()
    return trainer


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("model", list(STEP_MODELS))
def test_every_step_trained_model_takes_steps_on_the_device_in_each_precision(datasets, model, precision):
    trainer = _trainer(datasets[STEP_MODELS[model]], model, precision=precision)
    batches = iter(trainer.batches)
    for _ in range(3):
        batch = next(batches)
        loss = trainer.train_step(batch)
        assert torch.isfinite(loss).item() and loss.device.type == torch.device(DEVICE).type
    assert next(p for p in trainer.model.parameters()).device.type == torch.device(DEVICE).type
    if precision == "fp16":  # the GradScaler really scales (its first scale is 2**16, halved on overflow)
        assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() > 1


def test_batches_are_built_on_the_device(datasets):
    for model in ("neumf", "multvae"):
        trainer = _trainer(datasets[STEP_MODELS[model]], model)
        batch = next(iter(trainer.batches))  # as the trainer gets it: not moved here
        tensors = [v for v in vars(batch).values() if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == torch.device(DEVICE).type for t in tensors)


def test_the_metric_sums_on_the_device_equal_the_cpu_ones():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(64, 101, generator=g)
    scores[:, 5] = scores[:, 7]  # ties count against the model on every device alike
    relevant = torch.zeros_like(scores, dtype=torch.bool)
    relevant[:, 0] = True
    relevant[::3, 7] = True
    cpu = per_user_metrics(scores, relevant, (1, 10, 50))
    device = per_user_metrics(scores.to(DEVICE), relevant.to(DEVICE), (1, 10, 50))
    assert cpu.keys() == device.keys()
    for name in cpu:
        torch.testing.assert_close(device[name].cpu(), cpu[name], rtol=1e-6, atol=1e-9)


def test_a_resumed_run_continues_exactly(datasets):
    """Train 2 epochs straight; train 1, checkpoint, restore into a fresh trainer, train the 2nd:
    the same weights. Deterministic kernels are asked for (on CUDA a kernel without one raises,
    naming itself)."""
    torch.use_deterministic_algorithms(True)
    try:
        data = datasets["ncf"]
        straight = _trainer(data, "neumf", epochs=2)
        for _ in range(2):
            straight.train_epoch()
            straight.state.epoch += 1
        first = _trainer(data, "neumf", epochs=2)
        first.train_epoch()
        first.state.epoch += 1
        state = first.checkpoint_state()
        resumed = _trainer(data, "neumf", epochs=2)
        resumed.restore(state)
        resumed.train_epoch()
        for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
            assert torch.equal(a, b), name
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.fixture(scope="module")
def device_run(datasets, tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda-run") / "gmf"
    api.train(datasets["ncf"], "gmf", out, epochs=2, device=DEVICE, batch_size=256, progress=False)
    return out


def test_evaluate_and_recommend_on_the_device_equal_the_cpu(device_run):
    on_device, on_cpu = api.load_run(device_run, DEVICE), api.load_run(device_run, "cpu")
    a, b = on_device.evaluate("test", write=False), on_cpu.evaluate("test", write=False)
    assert a["users"] == b["users"]
    for name in ("hr@10", "ndcg@10", "mrr"):  # float rounding may reorder a near tie: one user at most
        assert abs(a[name] - b[name]) <= 1.0 / a["users"] + 1e-6, name
    users = [str(u) for u in on_cpu.data.original_user_ids()[:50]]
    top_device = on_device.recommend(users, k=10, columns=[])
    top_cpu = on_cpu.recommend(users, k=10, columns=[])
    same = len(set(zip(top_device["user"], top_device["item"])) & set(zip(top_cpu["user"], top_cpu["item"])))
    assert same >= 0.95 * top_cpu.height


def test_export_from_a_device_run_passes_its_parity_check(device_run, tmp_path):
    from recscale.export import export_run
    manifest = export_run(device_run, tmp_path / "bundle", ("onnx",))
    assert manifest["model"] == "gmf" and (tmp_path / "bundle" / "manifest.json").is_file()


def test_torchrun_with_one_worker(datasets, tmp_path):
    """World size 1 under torchrun: NCCL on CUDA (gloo in the CPU dry run)."""
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                           "-m", "recscale", "-q", "train", "--data", str(datasets["ncf"].root), "--model", "gmf",
                           "--epochs", "1", "--batch-size", "256", "--device", DEVICE, "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert np.isfinite(record["loss"])


def test_the_prefetcher_delivers_the_loaders_batches_on_the_device(datasets):
    trainer = _trainer(datasets["ncf"], "neumf", device="cpu")  # batches made on the host
    loader = trainer.loader
    loader.set_epoch(0)
    expected = [b.users.clone() for b in loader]
    loader.set_epoch(0)
    fetched = list(Prefetcher(loader, DEVICE))
    assert len(fetched) == len(expected)
    assert all(b.users.device.type == torch.device(DEVICE).type and torch.equal(b.users.cpu(), e)
               for b, e in zip(fetched, expected))

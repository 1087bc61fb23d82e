"""A training run on disk: runs/NAME/{config.toml, checkpoints/{last,best}.pt, metrics.jsonl}.

`start_run` builds the model from a prepared dataset and the resolved config, fits it, validates it
and checkpoints it; `load_run` rebuilds the model from the run directory alone for evaluate and
recommend.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from recscale.config import TrainConfig, build, read_config_file, to_toml
from recscale.data.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.evaluation.protocols import evaluate
from recscale.models.registry import MODELS
from recscale.training.checkpoint import load_checkpoint, save_checkpoint


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecscaleError(f"--device: {name} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RecscaleError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None


def build_model(name: str, data: PreparedDataset, model_params: dict):
    if name not in MODELS:
        raise RecscaleError(f"--model: unknown model {name!r} (known: {', '.join(MODELS)})")
    cls = MODELS[name]
    cfg = build(cls.Config, model_params, source=f"model {name}")
    return cls(data.n_users, data.n_items, cfg), cfg


def sparse_tensor(matrix) -> torch.Tensor:
    """scipy CSR -> coalesced torch sparse COO (row-major order), the form closed-form models take."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), size=matrix.shape,
                                   check_invariants=False).coalesce()


def validation_split(data: PreparedDataset) -> str:
    return "valid" if data.has("valid") or data.has("valid_heldout") else "test"


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def start_run(cfg: TrainConfig, model_params: dict, out: str | Path, overwrite: bool = False) -> dict:
    """Train `cfg.model` on `cfg.data`, write the run to `out`, and return the validation metrics."""
    out = Path(out)
    if cfg.model not in MODELS:
        raise RecscaleError(f"--model: unknown model {cfg.model!r} (known: {', '.join(MODELS)})")
    if (out / "config.toml").exists() and not overwrite:
        raise RecscaleError(f"{out}: a run already exists there (pass --overwrite to replace it)")
    data = PreparedDataset(cfg.data)
    device = pick_device(cfg.device)
    model, model_cfg = build_model(cfg.model, data, model_params)
    model.to(device)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    resolved = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)}
    (out / "config.toml").write_text(to_toml(resolved))

    start = time.perf_counter()
    if model.closed_form:
        model.fit(sparse_tensor(data.user_items("train")).to(device))
    else:
        raise RecscaleError(f"--model: {cfg.model} needs the step trainer, which is not available yet")
    split = validation_split(data)
    metrics = evaluate(model, data, split, ks=cfg.ks, device=device, batch_size=cfg.eval_batch_size)
    record = {"epoch": 0, "split": split, "protocol": data.protocol, "train_seconds": time.perf_counter() - start, **metrics}
    append_jsonl(out / "metrics.jsonl", record)
    state = {"model": model.state_dict(), "epoch": 0, "metrics": metrics}
    save_checkpoint(out / "checkpoints" / "last.pt", state)
    save_checkpoint(out / "checkpoints" / "best.pt", state)
    return record


def load_run(run: str | Path, device: str = "auto", checkpoint: str = "best"):
    """(model on device, its prepared dataset, the run's TrainConfig) from a run directory."""
    run = Path(run)
    if not (run / "config.toml").exists():
        raise RecscaleError(f"--run: {run} is not a run directory (no config.toml; run `recscale train`)")
    sections = read_config_file(run / "config.toml")
    cfg = build(TrainConfig, sections.get("train", {}), source=str(run / "config.toml"))
    data = PreparedDataset(cfg.data)
    model, _ = build_model(cfg.model, data, sections.get("model", {}))
    state = load_checkpoint(run / "checkpoints" / f"{checkpoint}.pt")
    model.load_state_dict(state["model"])
    target = pick_device(device)
    return model.to(target), data, cfg, target

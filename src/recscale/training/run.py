"""A training run on disk: runs/NAME/{config.toml, checkpoints/{last,best}.pt, metrics.jsonl}.

`start_run` builds the model from a prepared dataset and the resolved config, fits it, validates it
and checkpoints it; `load_run` rebuilds the model from the run directory alone for evaluate and
recommend.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch

from recscale import distributed
from recscale.config import TrainConfig, build, read_config_file, to_toml
from recscale.data.prepared import PreparedDataset
from recscale.errors import RecscaleError, RunInterrupted
from recscale.fsutil import atomic_file
from recscale.evaluation.protocols import evaluate, validation_split
from recscale.models.base import DataShape
from recscale.models.ncf import NCFConfig, resolve_embedding_gradients
from recscale.models.registry import MODELS
from recscale.optim.factory import check_optimizer
from recscale.training.checkpoint import load_checkpoint, save_checkpoint
from recscale.training.trainer import StopRequested, Trainer, selection_metric


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RecscaleError(f"--device: {name} requested but CUDA is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise RecscaleError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N)") from None


def data_shape(data: PreparedDataset) -> DataShape:
    """The dataset's dimensions and item features, as models take them (no files)."""
    features = data.meta["features"]
    genres = data.item_genres() if "genres" in features else None
    return DataShape(
        n_users=data.n_users, n_items=data.n_items,
        user_dim=features["user"]["embedding_dim"], item_dim=features["item"]["embedding_dim"],
        n_genres=features.get("genres", {}).get("cardinality", 0),
        genre_dim=features.get("genres", {}).get("embedding_dim", 16),
        genre_values=genres[0] if genres else None, genre_offsets=genres[1] if genres else None)


def model_class(name: str):
    if name not in MODELS:
        raise RecscaleError(f"--model: unknown model {name!r} (known: {', '.join(MODELS)})")
    return MODELS[name]


def build_model(name: str, data: PreparedDataset, model_params: dict, batch_size: int = 1, world_size: int = 1,
                optimizer: str = ""):
    """The model and its resolved Config (settings left to 'auto' are decided here, from the data
    and the batch size, so that config.toml records what was used). Under DDP embedding gradients
    are dense (NCCL cannot all-reduce sparse tensors), and under LARS too (it needs a layer's
    gradient norm)."""
    cls = model_class(name)
    cfg = build(cls.Config, model_params, source=f"model {name}")
    if isinstance(cfg, NCFConfig):
        if (world_size > 1 or optimizer == "lars") and cfg.embedding_gradients == "auto":
            cfg = dataclasses.replace(cfg, embedding_gradients="dense")
        cfg = resolve_embedding_gradients(cfg, data.n_users + data.n_items, batch_size // world_size)
    return cls(data_shape(data), cfg), cfg


def resolve_train_config(*layers: dict, source: str) -> TrainConfig:
    """dataclass defaults < the model's own defaults (scaled to the data) < config file < flags."""
    def last(key, default):
        return next((layer[key] for layer in reversed(layers) if layer.get(key)), default)

    cls = model_class(last("model", TrainConfig.model))
    data = last("data", "")
    defaults = cls.default_train_settings(PreparedDataset(data).meta["counts"]) if data else cls.train_defaults
    return build(TrainConfig, defaults, *layers, source=source)


def sparse_tensor(matrix) -> torch.Tensor:
    """scipy CSR -> coalesced torch sparse COO (row-major order), the form closed-form models take."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), size=matrix.shape,
                                   check_invariants=False).coalesce()


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def _seeded(seed: int, device: torch.device):
    """Seed torch's default generators for this run only: the caller's global state is restored
    afterwards (dropout and VAE sampling draw from them; loaders use their own generators)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    stack = contextlib.ExitStack()
    stack.enter_context(torch.random.fork_rng(devices=devices))
    torch.manual_seed(seed)
    return stack


@contextlib.contextmanager
def graceful_stop(trainer: Trainer):
    """SIGINT and SIGTERM ask the trainer to stop after its current step (it then writes `last`).
    Only the main thread may install handlers; elsewhere signals keep their default behaviour."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def ask(signum, frame):
        trainer.stop_signal = signum

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train(trainer: Trainer, out: Path) -> dict:
    with graceful_stop(trainer):
        try:
            trainer.fit()
        except StopRequested as stop:
            raise RunInterrupted(f"{stop}; wrote {out / 'checkpoints' / 'last.pt'}; resume with: "
                                 f"recscale train --resume {out}", stop.signum) from None
    history = trainer.state.history
    metric = selection_metric(trainer.data.protocol)
    best = max((r for r in history if metric in r), key=lambda r: r[metric], default=history[-1] if history else {})
    return {**best, "protocol": trainer.data.protocol}


def start_run(cfg: TrainConfig, model_params: dict, out: str | Path, overwrite: bool = False) -> dict:
    """Train `cfg.model` on `cfg.data`, write the run to `out`, and return the best validation record.

    Under torchrun every worker calls this; rank 0 alone writes files. A worker group that torchrun
    restarted after a failure (`--max-restarts`) resumes from the run's `last` checkpoint."""
    out = Path(out)
    info = distributed.from_env()
    if info.restart and (out / "checkpoints" / "last.pt").exists():
        return resume_run(out)
    model_class(cfg.model)
    if (out / "config.toml").exists() and not overwrite:
        raise RecscaleError(f"{out}: a run already exists there (pass --overwrite to replace it, "
                            f"or --resume {out} to continue it)")
    data = PreparedDataset(cfg.data)
    device = distributed.device_for(info, pick_device(cfg.device))
    with _seeded(cfg.seed, device), _process_group(info, device):
        model, model_cfg = build_model(cfg.model, data, model_params, cfg.batch_size, info.world_size, cfg.optimizer)
        if model.closed_form and info.enabled:
            raise RecscaleError(f"--model: {cfg.model} is fitted in closed form in one process; run it without torchrun")
        check_optimizer(model, cfg.optimizer)
        if cfg.pretrained_gmf or cfg.pretrained_mlp:
            if not (cfg.pretrained_gmf and cfg.pretrained_mlp) or cfg.model != "neumf":
                raise RecscaleError("--pretrained-gmf/--pretrained-mlp: give both, for --model neumf")
            model.load_pretrained(load_run(cfg.pretrained_gmf, "cpu")[0], load_run(cfg.pretrained_mlp, "cpu")[0])
        model.to(device)
        if info.rank == 0:
            for stale in ("checkpoints", "metrics.jsonl"):
                path = out / stale
                shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            (out / "checkpoints").mkdir(parents=True)
            resolved = {"train": dataclasses.asdict(cfg), "model": dataclasses.asdict(model_cfg)}
            with atomic_file(out / "config.toml") as tmp:
                tmp.write_text(to_toml(resolved))
        distributed.barrier()
        if model.closed_form:
            return _fit_closed_form(model, data, cfg, device, out)
        trainer = Trainer(model, data, cfg, device, out, info.rank, info.world_size,
                          distributed.wrap(model, info, device))
        return _train(trainer, out)


@contextlib.contextmanager
def _process_group(info, device):
    distributed.init(info, device)
    try:
        yield
    finally:
        distributed.destroy()


def resume_run(run: str | Path, device: str | None = None) -> dict:
    """Continue a run from its `last` checkpoint: same model, optimizer, scaler, RNG streams and
    position in the epoch, so that it ends exactly as an uninterrupted run would. Every worker of a
    torchrun group reads the same checkpoint."""
    run = Path(run)
    if not (run / "config.toml").exists():
        raise RecscaleError(f"--resume: {run} is not a run directory (no config.toml)")
    sections = read_config_file(run / "config.toml")
    cfg = build(TrainConfig, sections.get("train", {}), source=str(run / "config.toml"))
    if device:
        cfg = dataclasses.replace(cfg, device=device)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    if "optimizer" not in state:
        raise RecscaleError(f"--resume: {run} holds a closed-form model; there is nothing to resume")
    data = PreparedDataset(cfg.data)
    info = distributed.from_env()
    target = distributed.device_for(info, pick_device(cfg.device))
    with _seeded(cfg.seed, target), _process_group(info, target):
        model, _ = build_model(cfg.model, data, sections.get("model", {}), cfg.batch_size, info.world_size,
                               cfg.optimizer)
        model.to(target)
        trainer = Trainer(model, data, cfg, target, run, info.rank, info.world_size,
                          distributed.wrap(model, info, target))
        trainer.restore(state)
        if info.rank == 0:
            with atomic_file(run / "metrics.jsonl") as tmp:  # exactly the epochs the checkpoint has done
                tmp.write_text("".join(json.dumps(r) + "\n" for r in trainer.state.history))
        distributed.barrier()
        return _train(trainer, run)


def _fit_closed_form(model, data: PreparedDataset, cfg: TrainConfig, device, out: Path) -> dict:
    start = time.perf_counter()
    model.fit(sparse_tensor(data.user_items("train")).to(device))
    split = validation_split(data)
    metrics = evaluate(model, data, split, ks=cfg.ks, device=device, batch_size=cfg.eval_batch_size)
    record = {"epoch": 0, "split": split, "protocol": data.protocol, "train_seconds": time.perf_counter() - start,
              **metrics}
    append_jsonl(out / "metrics.jsonl", record)
    state = {"model": model.state_dict(), "train_state": {"epoch": 1}}
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
    if not (run / "checkpoints" / f"{checkpoint}.pt").exists() and checkpoint == "best":
        checkpoint = "last"  # a run stopped before its first validation
    data = PreparedDataset(cfg.data)
    model, _ = build_model(cfg.model, data, sections.get("model", {}))
    state = load_checkpoint(run / "checkpoints" / f"{checkpoint}.pt")
    model.load_state_dict(state["model"])
    target = pick_device(device)
    return model.to(target), data, cfg, target

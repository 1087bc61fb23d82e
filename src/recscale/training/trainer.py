"""One trainer for every step-trained model.

The step, in the mixed-precision order: autocast forward (loss inside the model) ->
scaler.scale(loss).backward() -> scaler.unscale_ -> clip -> scaler.step -> scaler.update, with
one GradScaler per run (active for fp16 only). After each epoch the model is validated with its
protocol's metric; the best epoch is checkpointed as `best`, every epoch as `last`; training stops
early after `patience` epochs without improvement.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from recscale.config import TrainConfig
from recscale.data.loaders import PairLoader, Prefetcher, TabularLoader, UserRowLoader
from recscale.data.prepared import PreparedDataset
from recscale.distributed import all_reduce_sum
from recscale.evaluation.protocols import evaluate, validation_split
from recscale.models.base import Recommender
from recscale.optim.factory import make_optimizers
from recscale.optim.schedules import kl_beta, learning_rate, scaled_lr
from recscale.training.checkpoint import save_checkpoint
from recscale.training.logging import RunLogger

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def selection_metric(protocol: str) -> str:
    """The metric each protocol's paper selects models by."""
    return "hr@10" if protocol == "ncf" else "ndcg@100"


def training_users(data: PreparedDataset) -> torch.Tensor:
    if data.protocol == "vae":
        return data.group_users("train")
    return torch.from_numpy(np.flatnonzero(np.diff(data.user_items("train").indptr)))


def make_loader(model: Recommender, data: PreparedDataset, cfg: TrainConfig, rank: int = 0, world_size: int = 1,
                device: torch.device | str = "cpu"):
    """The loader that feeds this model's batch kind; `cfg.batch_size` is global, split across ranks.
    Pair and row loaders build their batches on `device` (on a GPU: data and negatives stay there)."""
    local = max(1, cfg.batch_size // world_size)
    common = {"seed": cfg.seed, "rank": rank, "world_size": world_size}
    if model.batch_kind == "pairs":
        users, items = data.columns("train", "user", "item")
        return PairLoader(users, items, data.n_items, local, negatives=cfg.negatives, device=device, **common)
    if model.batch_kind == "rows":
        matrix = data.user_items("train", binary=not model.explicit_rows)
        return UserRowLoader(matrix, training_users(data), local, device=device, **common)
    users, items, ratings = data.columns("train", "user", "item", "rating")
    values, offsets = data.item_genres()
    labels = (ratings > model.cfg.like_threshold).float()
    return TabularLoader(users, items, labels, values, offsets, local, **common)


AUTO_ANNEAL_FRACTION = 0.8


def schedule_for(model: Recommender, total_steps: int) -> Callable[[int], dict]:
    """Keyword arguments the model's forward takes at a given step (e.g. Mult-VAE's KL beta).
    A `total_anneal_steps` of 0 anneals over AUTO_ANNEAL_FRACTION of the run's `total_steps`."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and hasattr(cfg, "anneal_cap"):
        anneal = cfg.total_anneal_steps or max(1, int(AUTO_ANNEAL_FRACTION * total_steps))
        return lambda step: {"beta": kl_beta(step, anneal, cfg.anneal_cap)}
    return lambda step: {}


@dataclasses.dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    epoch: int = 0          # epochs finished
    step: int = 0           # optimizer steps taken (drives schedules)
    position: int = 0       # batches done in the current epoch
    loss_sum: float = 0.0   # of the current epoch so far
    samples: int = 0        # of the current epoch so far
    best: float = -math.inf
    best_epoch: int = -1
    stale: int = 0
    history: list = dataclasses.field(default_factory=list)  # one record per finished epoch


class StopRequested(Exception):
    """Raised after a graceful stop wrote `last`; carries the signal number."""

    def __init__(self, signum: int, state: TrainState):
        super().__init__(f"stopped by signal {signum} at epoch {state.epoch + 1}, batch {state.position}")
        self.signum, self.state = signum, state


class Trainer:
    def __init__(self, model: Recommender, data: PreparedDataset, cfg: TrainConfig, device: torch.device,
                 run_dir: Path | None, rank: int = 0, world_size: int = 1, ddp_model=None):
        self.model, self.data, self.cfg, self.device = model, data, cfg, device
        self.run_dir, self.rank, self.world_size = run_dir, rank, world_size
        self.net = ddp_model or model  # what runs the forward (DDP wrapper or the module itself)
        self.loader = make_loader(model, data, cfg, rank, world_size, device)
        on_host = getattr(self.loader, "device", torch.device("cpu")).type != device.type
        self.batches = Prefetcher(self.loader, device) if on_host and device.type == "cuda" else self.loader
        self.peak_lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.base_batch_size, cfg.lr_scaling)
        self.optimizers = make_optimizers(model, cfg.optimizer, self.peak_lr, cfg.weight_decay, cfg.momentum,
                                          cfg.lars_eta)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
        self.total_steps = cfg.epochs * len(self.loader)
        self.warmup_steps = round(cfg.warmup_epochs * len(self.loader))
        self.schedule = schedule_for(model, self.total_steps)
        self.metric = selection_metric(data.protocol)
        self.state = TrainState()
        self.stop_signal: int | None = None  # set by a signal handler; honoured after the current step
        self.logger = RunLogger(run_dir, enabled=rank == 0, progress=cfg.progress)

    def _autocast(self):
        if self.cfg.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.cfg.precision])

    def lr_at(self, step: int) -> float:
        return learning_rate(step, self.peak_lr, self.warmup_steps, self.total_steps, self.cfg.warmup,
                             self.cfg.lr_decay)

    def train_step(self, batch) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        self.optimizers.set_lr(self.lr_at(self.state.step))
        with self._autocast():
            loss = self.net(batch, **self.schedule(self.state.step)).loss
        self.optimizers.zero_grad()
        self.scaler.scale(loss).backward()
        if self.cfg.clip_grad_norm > 0:
            self.optimizers.unscale(self.scaler)
            dense = [p for p in self.model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, self.cfg.clip_grad_norm)
        self.optimizers.step(self.scaler)
        self.scaler.update()
        self.state.step += 1
        return loss.detach()

    def train_epoch(self) -> dict:
        """Train from `state.position` to the end of the epoch `state.epoch`."""
        self.model.train()
        self.loader.set_epoch(self.state.epoch, self.state.position)
        total = torch.tensor(self.state.loss_sum, dtype=torch.float64, device=self.device)  # no sync per step
        start = time.perf_counter()
        timed_samples = 0
        n = len(self.loader)
        for batch in self.batches:
            loss = self.train_step(batch)
            total += loss.double()
            self.state.position += 1
            self.state.samples += len(batch)
            timed_samples += len(batch)
            if self.logger.tty:
                self.logger.progress(self.state.epoch, self.cfg.epochs, self.state.position, n, float(loss),
                                     timed_samples / (time.perf_counter() - start))
            every = self.cfg.checkpoint_every
            if self.stop_signal is not None or (every and self.state.step % every == 0 and self.state.position < n):
                self.state.loss_sum = float(total)
                self.save("last")
                if self.stop_signal is not None:
                    raise StopRequested(self.stop_signal, self.state)
        seconds = time.perf_counter() - start
        total = self._reduce(total.reshape(1)) / self.world_size if self.world_size > 1 else total  # mean over ranks
        record = {"loss": float(total) / max(self.state.position, 1), "lr": self.lr_at(self.state.step - 1),
                  "train_seconds": seconds,
                  "samples": self.state.samples * self.world_size,
                  "samples_per_second": timed_samples * self.world_size / seconds if seconds else float("nan")}
        self.state.position, self.state.loss_sum, self.state.samples = 0, 0.0, 0
        return record

    def _reduce(self, sums: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (on the device for NCCL); a no-op in one process."""
        return all_reduce_sum(sums.to(self.device)).cpu()

    def validate(self) -> dict:
        start = time.perf_counter()
        split = validation_split(self.data)
        metrics = evaluate(self.model, self.data, split, ks=self.cfg.ks, device=self.device,
                           batch_size=self.cfg.eval_batch_size, rank=self.rank, world_size=self.world_size,
                           reduce=self._reduce if self.world_size > 1 else None)
        return {"split": split, **metrics, "valid_seconds": time.perf_counter() - start}

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict:
        """Model (unwrapped), optimizers, scaler, position and every RNG stream the run draws from.
        The loaders need no state: an epoch is a function of (seed, epoch, rank)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {"model": self.model.state_dict(), "optimizer": self.optimizers.state_dict(),
                "scaler": self.scaler.state_dict(), "train_state": dataclasses.asdict(self.state), "rng": rng}

    def save(self, name: str, weights_only: bool = False) -> None:
        if self.rank != 0 or self.run_dir is None:
            return
        state = self.checkpoint_state()
        if weights_only:  # `best` is for evaluation, `last` for resuming
            state = {"model": state["model"], "train_state": state["train_state"]}
        save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", state)

    def restore(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizers.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(**state["train_state"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    # ------------------------------------------------------------------ the loop

    def fit(self, validate: bool = True) -> list[dict]:
        records = []
        while self.state.epoch < self.cfg.epochs and not (validate and self.state.stale >= self.cfg.patience):
            record = {"epoch": self.state.epoch, **self.train_epoch()}
            if validate:
                record |= self.validate()
                value = record[self.metric]
                improved = value > self.state.best
                if improved:
                    self.state.best, self.state.best_epoch, self.state.stale = value, self.state.epoch, 0
                else:
                    self.state.stale += 1
                record["best"] = improved
            self.state.epoch += 1
            self.state.history.append(record)
            records.append(record)
            self.save("last")  # before the log line: a crash in between loses no epoch on resume
            self.logger.epoch(record, self.metric)
            if record.get("best"):
                self.save("best", weights_only=True)
            if validate and self.state.stale >= self.cfg.patience:
                self.logger.message(f"early stop: no better {self.metric} for {self.cfg.patience} epochs")
        self.logger.close(self.state.history, self.metric)
        return records

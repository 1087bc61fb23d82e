"""One trainer for every step-trained model.

The step, in the mixed-precision order: autocast forward (loss inside the model) ->
scaler.scale(loss).backward() -> scaler.unscale_ -> clip -> scaler.step -> scaler.update, with
one GradScaler per run (active for fp16 only). After each epoch the model is validated with its
protocol's metric; the best epoch is checkpointed as `best`, every epoch as `last`; training stops
early after `patience` epochs without improvement, counted once the model's own schedule has
settled (before that, epochs optimize different objectives). A non-finite loss stops the run with
a clear error and is never checkpointed.

The trainer asks the model for everything specific to it (models/base.py): its loader, its
per-step schedule; it never tests what model it trains.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time

import torch

from recscale.config.run import EvalConfig, LoaderConfig, OptimConfig, RunConfig, SystemConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.loading.factory import training_loader
from recscale.data.loading.prefetch import Prefetcher
from recscale.errors import RecscaleError
from recscale.evaluation.protocols import evaluate, meaningful, validation_split
from recscale.models.base import Recommender
from recscale.optim.factory import make_optimizers
from recscale.optim.schedules import learning_rate, scaled_lr
from recscale.parallel.checkpoints import restore_sharded, save_sharded
from recscale.parallel.distributed import all_reduce_sum
from recscale.resources import native_bf16
from recscale.tensorfiles import save_checkpoint
from recscale.training.logging import RunLogger

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def selection_metric(protocol: str) -> str:
    """The metric each protocol's paper selects models by."""
    return "hr@10" if protocol == "ncf" else "ndcg@100"


def validation_ks(ks: tuple[int, ...], data: PreparedDataset) -> tuple[int, ...]:
    """The cut-offs validation computes: the run's meaningful ones (a run recorded before the rule
    may hold K=100 under ncf) and the selection metric's."""
    return tuple(sorted({*(k for k in ks if meaningful(k, data)), int(selection_metric(data.protocol).split("@")[1])}))


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


class Diverged(RecscaleError):
    """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the trainer reads of a run's settings: its groups and epochs, never the data's path.
    `label` only names its lines and bars (the model, and the trial under tune)."""

    epochs: int
    optim: OptimConfig
    loader: LoaderConfig
    eval: EvalConfig
    system: SystemConfig
    label: str = ""

    @classmethod
    def of(cls, cfg: RunConfig, label: str | None = None) -> "TrainSettings":
        return cls(cfg.epochs, cfg.optim, cfg.loader, cfg.eval, cfg.system, cfg.model if label is None else label)


class Trainer:
    def __init__(self, model: Recommender, data: PreparedDataset, settings: TrainSettings, device: torch.device,
                 run=None, rank: int = 0, world_size: int = 1, ddp_model=None, fused=None):
        """`run`: the RunDirectory checkpoints and logs go to (None: nothing is written).
        `fused`: (fused table optimizer, its parameter ids, its rate / --lr) when the tables are sharded
        (parallel/sharding.py)."""
        self.model, self.data, self.settings, self.device = model, data, settings, device
        self.run, self.rank, self.world_size = run, rank, world_size
        self.net = ddp_model or model  # what runs the forward (DDP/DMP wrapper or the module itself)
        self.sharded = fused is not None
        if model.batch_kind is None:
            raise RecscaleError(f"{type(model).__name__} is fitted in closed form; it has no training batches")
        self.loader = training_loader(model.batch_kind, data, settings.loader, settings.system.seed, rank, world_size, device)
        on_host = self.loader.device.type != device.type
        self.batches = Prefetcher(self.loader, device) if on_host and device.type == "cuda" else self.loader
        optim = settings.optim
        self.peak_lr = scaled_lr(optim.lr, settings.loader.batch_size, optim.base_batch_size, optim.lr_scaling)
        self.optimizers = make_optimizers(model, optim.optimizer, self.peak_lr, optim.weight_decay, optim.momentum,
                                          optim.lars_eta, fused)
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.system.precision == "fp16")
        self.total_steps = settings.epochs * len(self.loader)
        self.warmup_steps = round(optim.warmup_epochs * len(self.loader))
        self.schedule = model.step_schedule(self.total_steps)
        self.metric = selection_metric(data.protocol)
        self.state = TrainState()
        self.stop_signal: int | None = None  # set by a signal handler; honoured after the current step
        self.on_epoch = None  # called with each finished epoch's record, once it is checkpointed (tune prunes there)
        self.logger = RunLogger(run, enabled=rank == 0, progress=settings.system.progress, label=settings.label,
                                tracker=settings.system.tracker)
        if device.type == "cpu" and settings.system.precision == "bf16" and not native_bf16():
            self.logger.message("warning: --precision bf16: this CPU has no native bf16 (AVX512-BF16 or AMX); "
                                "PyTorch emulates it, usually several times slower than fp32")
        if self.loader.dropped_users:
            self.logger.message(f"note: {self.loader.dropped_users} user(s) interacted with every item; with no "
                                f"negative to sample, their interactions are left out of training")

    def _autocast(self):
        if self.settings.system.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AMP_DTYPES[self.settings.system.precision])

    def lr_at(self, step: int) -> float:
        optim = self.settings.optim
        return learning_rate(step, self.peak_lr, self.warmup_steps, self.total_steps, optim.warmup, optim.lr_decay)

    def train_step(self, batch) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        self.optimizers.set_lr(self.lr_at(self.state.step))
        with self._autocast():
            loss = self.net(batch, **self.schedule.kwargs(self.state.step)).loss
        self.optimizers.zero_grad()
        self.scaler.scale(loss).backward()
        if self.settings.optim.clip_grad_norm > 0:
            self.optimizers.unscale(self.scaler)
            dense = [p for p in self.model.parameters() if p.grad is not None and not p.grad.is_sparse]
            torch.nn.utils.clip_grad_norm_(dense, self.settings.optim.clip_grad_norm)
        self.optimizers.step(self.scaler)
        self.scaler.update()
        self.state.step += 1
        return loss.detach()

    def _check_finite(self, total: torch.Tensor) -> None:
        if not math.isfinite(float(total)):
            raise Diverged(f"the training loss became {float(total)} in epoch {self.state.epoch + 1} "
                           f"(lr {self.lr_at(max(self.state.step - 1, 0)):.3g}): try a lower --lr, --clip-grad-norm, "
                           f"or --precision fp32; nothing of this epoch was saved")

    def train_epoch(self) -> dict:
        """Train from `state.position` to the end of the epoch `state.epoch`."""
        self.model.train()
        self.loader.set_epoch(self.state.epoch, self.state.position)
        total = torch.tensor(self.state.loss_sum, dtype=torch.float64, device=self.device)  # no sync per step
        start = time.perf_counter()
        timed_samples = 0
        n = len(self.loader)
        shown = self.logger.epoch_bar(self.state.epoch, self.settings.epochs, n, self.state.position)
        for batch in self.batches:
            loss = self.train_step(batch)
            total += loss.double()
            self.state.position += 1
            self.state.samples += len(batch)
            timed_samples += len(batch)
            shown.update()
            if not shown.disable:  # float(loss) waits for the device: only when someone watches
                shown.set_postfix_str(f"loss {float(loss):.4f}, {timed_samples / (time.perf_counter() - start):,.0f} "
                                      f"samples/s", refresh=False)
            every = self.settings.system.checkpoint_every
            if self.stop_signal is not None or (every and self.state.step % every == 0 and self.state.position < n):
                self._check_finite(total)
                self.state.loss_sum = float(total)
                self.save("last")
                if self.stop_signal is not None:
                    raise StopRequested(self.stop_signal, self.state)
        shown.close()
        seconds = time.perf_counter() - start
        total = self._reduce(total.reshape(1)) / self.world_size if self.world_size > 1 else total  # mean over ranks
        self._check_finite(total)
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
        # Sharded lookups are collective: every worker scores the same batches (all users).
        shared = self.world_size > 1 and not self.sharded
        metrics = evaluate(self.model, self.data, split, ks=validation_ks(self.settings.eval.ks, self.data),
                           device=self.device, batch_size=self.settings.eval.eval_batch_size,
                           rank=self.rank if shared else 0, world_size=self.world_size if shared else 1,
                           reduce=self._reduce if shared else None, block_bytes=self.settings.eval.score_block_mib << 20)
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
        if self.sharded:
            return self._save_sharded(name, weights_only)
        if self.rank != 0 or self.run is None:
            return
        state = self._state(weights_only)
        (self.run.path / "checkpoints").mkdir(exist_ok=True)
        save_checkpoint(self.run.path / "checkpoints" / f"{name}.pt", state)
        if name == "last":
            self.run.publish()  # a new run appears (or replaces the old one) with its first checkpoint

    def _state(self, weights_only: bool) -> dict:
        state = self.checkpoint_state()
        if weights_only:  # `best` is for evaluation, `last` for resuming
            state = {"model": state["model"], "train_state": state["train_state"]}
        return state

    def _save_sharded(self, name: str, weights_only: bool) -> None:
        """Shards from every worker, then the file that points at them (parallel/checkpoints.py)."""
        def commit(path, state):
            save_checkpoint(path, state)
            if name == "last":
                self.run.publish()

        def folder():
            return self.run.path / "checkpoints" if self.run is not None else None

        save_sharded(folder(), name, self._state(weights_only), self.state.step, self.rank, self.world_size,
                     commit, folder)

    def restore(self, state: dict, path=None) -> None:
        """Continue from a `last` checkpoint's state (`path`: where it was read, for sharded runs)."""
        for key in ("optimizer", "scaler", "train_state", "rng"):
            if key not in state:
                raise RecscaleError(f"checkpoint has no {key!r}: it cannot be resumed (it is a `best` "
                                    f"checkpoint or from another program)")
        if ("sharding" in state) != self.sharded:
            raise RecscaleError("checkpoint: written by a run with other --embeddings; resume with the run's own settings")
        optimizer_state = state["optimizer"]
        if self.sharded:
            model_state, optimizer_state = restore_sharded(path, state, self.rank, self.world_size,
                                                           self.model.state_dict(), self.optimizers.state_dict())
            state = {**state, "model": model_state}
        load_model_state(self.model, state["model"])
        try:
            self.optimizers.load_state_dict(optimizer_state)
            self.scaler.load_state_dict(state["scaler"])
            self.state = TrainState(**state["train_state"])
            torch.set_rng_state(state["rng"]["torch"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise RecscaleError(f"checkpoint does not match this run's optimizer or settings: {exc}") from None
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)

    # ------------------------------------------------------------------ the loop

    def _settled(self) -> bool:
        """Whether the model's objective has stopped changing (e.g. the KL weight reached its cap)."""
        return self.state.step >= self.schedule.settled_step

    def fit(self, validate: bool = True) -> list[dict]:
        records = []
        patience = self.settings.eval.patience
        while self.state.epoch < self.settings.epochs and not (validate and self.state.stale >= patience):
            record = {"epoch": self.state.epoch, **self.train_epoch()}
            if validate:
                record |= self.validate()
                value = record[self.metric]
                improved = math.isfinite(value) and value > self.state.best
                if improved:
                    self.state.best, self.state.best_epoch, self.state.stale = value, self.state.epoch, 0
                elif self._settled():
                    self.state.stale += 1
                record["best"] = improved
            self.state.epoch += 1
            self.state.history.append(record)
            records.append(record)
            self.save("last")  # before the log line: a crash in between loses no epoch on resume
            self.logger.epoch(record, self.metric)
            if record.get("best"):
                self.save("best", weights_only=True)
            if self.on_epoch is not None:
                self.on_epoch(record)
            if validate and self.state.stale >= patience:
                self.logger.message(f"early stop: no better {self.metric} for {patience} epochs")
        self.logger.close(self.state.history, self.metric)
        return records


def load_model_state(model: torch.nn.Module, state: dict) -> None:
    """Load weights, reporting a checkpoint of another model or shape in one line."""
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()
        detail = "; ".join(line.strip() for line in first[1:3]) or first[0] if first else str(exc)
        raise RecscaleError(f"checkpoint does not fit the model in config.toml ({type(model).__name__}): "
                            f"{detail}") from None

"""A training run on disk: runs/NAME/{config.toml, checkpoints/{last,best}.pt, metrics.jsonl, ...}.

`start_run` builds the model from a prepared dataset and the resolved config, fits it, validates it
and checkpoints it (into a directory built aside and published with its first checkpoint, see
rundir.py); `resume_run` continues it; `load_run` rebuilds the model from the run directory alone
for evaluate, recommend and export. `read_run_config` is the one reader of a run's config.toml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from recscale.config.files import MACHINE_SECTION, RECORD_SECTION, read_config_file, run_layers, to_toml
from recscale.config.layers import Layer, build_run_config
from recscale.config.run import RunConfig
from recscale.data.dataset.prepared import PreparedDataset, meta_digest
from recscale.errors import RecscaleError, RunInterrupted
from recscale.evaluation.protocols import evaluate, validation_split
from recscale.fsutil import atomic_file, refuse_if_input, signal_handlers
from recscale.optim.factory import check_optimizer
from recscale.parallel import distributed
from recscale.parallel.checkpoints import gather_sharded
from recscale.progress import LOGGER
from recscale.tensorfiles import load_checkpoint, save_checkpoint
from recscale.training.build import (
    build_model,
    build_trainer,
    model_class,
    open_data,
    pick_device,
    place,
    resolve_data_loading,
    seeded,
    without_retired,
)
from recscale.training.rundir import CONFIG, LAST, RunDirectory, has_checkpoint, is_run
from recscale.training.trainer import StopRequested, Trainer, load_model_state, selection_metric, validation_ks
from recscale.training.warmstart import warm_start_state

STOP_GRACE_SECONDS = 10.0    # a stop signal not honoured by then (a long step) ends the process


def sparse_tensor(matrix) -> torch.Tensor:
    """scipy CSR -> coalesced torch sparse COO (row-major order), the form closed-form models take."""
    coo = matrix.tocoo()
    indices = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(indices, torch.from_numpy(coo.data), size=matrix.shape,
                                   check_invariants=False).coalesce()


# ----------------------------------------------------------------------------- config.toml


def _meta_digest(data_dir: Path) -> str:
    try:
        return meta_digest(data_dir)
    except OSError:
        return ""


MACHINE_RESOLVED = ("data_loading", "memory_budget")  # loader settings this machine decides when left to auto


def write_run_config(path: Path, cfg: RunConfig, model_cfg: Any, run_final: Path, asked: RunConfig | None = None) -> None:
    """config.toml: the settings as asked (`asked`; machine-resolved ones as given, e.g. "auto"),
    one section per group; what this machine resolved of them ([machine]); and the dataset it was
    trained on (absolute path, path relative to the run, and a digest of its meta.json)."""
    data = Path(cfg.data)
    dataset = {"path": str(data), "relative": os.path.relpath(data, run_final), "meta_sha256": _meta_digest(data)}
    asked = cfg if asked is None else asked.replace(data=cfg.data)
    machine = {name: getattr(cfg.loader, name) for name in MACHINE_RESOLVED}
    sections = {**asked.sections(), "model": dataclasses.asdict(model_cfg), MACHINE_SECTION: machine,
                RECORD_SECTION: dataset}
    with atomic_file(path) as tmp:
        tmp.write_text("# written by recscale train; `recscale train --config` reads it back\n" + to_toml(sections))


def locate_dataset(run: Path, recorded: str, dataset: dict) -> Path:
    """The run's dataset: at its recorded path, or where it sits relative to the run when the two
    moved together. A dataset that is gone, or that changed since training, is an error saying so."""
    candidates = [Path(recorded)]
    if dataset.get("relative"):
        candidates.append(run / dataset["relative"])
    if not Path(recorded).is_absolute():  # runs written before paths were recorded absolute
        candidates.append(Path.cwd() / recorded)
    digest = dataset.get("meta_sha256", "")
    for candidate in candidates:
        if (candidate / "meta.json").is_file():
            if digest and _meta_digest(candidate) != digest:
                raise RecscaleError(f"{run}: the dataset at {candidate} changed since this run was trained "
                                    f"(its meta.json differs); prepare it again as it was, or train again")
            return candidate
    raise RecscaleError(f"{run}: its dataset {recorded} is gone (moved or deleted"
                        + (f"; also not at {candidates[1]}" if len(candidates) > 1 else "")
                        + "); put it back, or prepare it again there")


def read_run_config(run: str | Path) -> tuple[RunConfig, Layer]:
    """(RunConfig with the dataset located, the model's hyperparameters) of a run directory."""
    run = Path(run)
    path = run / CONFIG
    if not path.is_file():
        raise RecscaleError(f"{run}: not a run directory (no {CONFIG}; run `recscale train`)")
    sections = read_config_file(path)
    dataset = sections.pop(RECORD_SECTION, {})
    machine = sections.pop(MACHINE_SECTION, {})  # runs written before it recorded the resolved values in [loader]
    layers, model = run_layers(sections, str(path))
    cfg = build_run_config(*layers, Layer({k: v for k, v in machine.items() if k in MACHINE_RESOLVED}, str(path),
                                          "key", "loader"))
    return cfg.replace(data=str(locate_dataset(run, cfg.data, dataset))), without_retired(cfg.model, model)


# ----------------------------------------------------------------------------- signals


@contextlib.contextmanager
def graceful_stop(trainer: Trainer):
    """SIGINT and SIGTERM ask the trainer to stop after its current step (it then writes `last`).
    If the step does not end within STOP_GRACE_SECONDS, or a second signal comes, the process
    exits at once with 128 + the signal number (the previous checkpoint stays).
    Only the main thread may install handlers; elsewhere signals keep their default behaviour."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def hard_exit(signum: int, why: str) -> None:
        print(f"recscale train: {why}; exiting without a new checkpoint", file=sys.stderr, flush=True)
        os._exit(128 + signum)

    def ask(signum, frame):
        if trainer.stop_signal is not None:
            hard_exit(signum, "second stop signal")
        trainer.stop_signal = signum
        timer = threading.Timer(STOP_GRACE_SECONDS, hard_exit,
                                (signum, f"the current step did not end within {STOP_GRACE_SECONDS:.0f}s of the stop signal"))
        timer.daemon = True
        timer.start()

    with signal_handlers(ask, (signal.SIGINT, signal.SIGTERM)):
        yield


def _train(trainer: Trainer, final: Path) -> dict:
    with graceful_stop(trainer):
        try:
            trainer.fit()
        except StopRequested as stop:
            raise RunInterrupted(f"{stop}; wrote {final / LAST}; resume with: "
                                 f"recscale train --resume {final}", stop.signum) from None
    history = trainer.state.history
    metric = selection_metric(trainer.data.protocol)
    best = max((r for r in history if metric in r), key=lambda r: r[metric], default=history[-1] if history else {})
    return {**best, "protocol": trainer.data.protocol}


@contextlib.contextmanager
def _process_group(info, device):
    distributed.init(info, device)
    try:
        yield
    except BaseException:
        distributed.destroy(clean=False)
        raise
    distributed.destroy()


# ----------------------------------------------------------------------------- start, resume, load


def start_run(cfg: RunConfig, model_params: Layer | dict, out: str | Path, overwrite: bool = False,
              on_epoch=None, label: str | None = None) -> dict:
    """Train `cfg.model` on `cfg.data`, write the run to `out`, and return the best validation record;
    `on_epoch(record)` is called after each epoch (an exception it raises ends the run there);
    `label` names the run in its lines (default: the model).

    Under torchrun every worker calls this; rank 0 alone writes files. A worker group that torchrun
    restarted after a failure (`--max-restarts`) resumes from the run's `last` checkpoint."""
    out = Path(out)
    info = distributed.from_env()
    if info.restart and has_checkpoint(out):
        return resume_run(out)
    model_class(cfg.model)
    cfg = cfg.replace(data=str(Path(cfg.data).absolute()))  # found again from any working directory
    asked = cfg
    cfg = resolve_data_loading(cfg, PreparedDataset(cfg.data))
    data = open_data(cfg)
    device = distributed.device_for(info, pick_device(cfg.system.device))
    run = None
    if info.rank == 0:
        run, note = RunDirectory.create(out, overwrite, inputs=(cfg.data,))
        if note:
            LOGGER.info(f"recscale train: {note}")
    try:
        with seeded(cfg.system.seed, device), _process_group(info, device):
            model, model_cfg = build_model(cfg, model_params, data, info.world_size, for_training=True)
            if model.closed_form and info.enabled:
                raise RecscaleError(f"--model: {cfg.model} is fitted in closed form in one process; run it without torchrun")
            check_optimizer(model, cfg.optim.optimizer)
            pretrained = {} if cfg.warm_start else model.pretrained_runs(model_cfg)  # a warm start replaces them
            if pretrained and cfg.system.embeddings == "sharded":
                raise RecscaleError("--pretrained-gmf/--pretrained-mlp: not with --embeddings sharded (the tables "
                                    "are initialized shard by shard); train replicated, or without them")
            if run is not None:
                refuse_if_input(run.final, [*pretrained.values(), *filter(None, [cfg.warm_start])])
            if pretrained:
                model.init_from_pretrained({role: load_run(path, "cpu").model for role, path in pretrained.items()})
            if cfg.warm_start:
                _warm_start(model, cfg, data, info.rank)
            place(model, device)
            if run is not None:
                write_run_config(run.path / CONFIG, cfg, model_cfg, run.final, asked)
            distributed.barrier()
            if model.closed_form:
                return _fit_closed_form(model, data, cfg, device, run)
            trainer = build_trainer(cfg, model, data, device, run, info, label)
            trainer.on_epoch = on_epoch
            return _train(trainer, out.absolute())
    except BaseException:
        if run is not None:
            run.abandon()  # only removes a run that was never published
        raise
    finally:
        if run is not None:
            run.close()


def _warm_start(model, cfg: RunConfig, data: PreparedDataset, rank: int) -> None:
    state = warm_start_state(cfg.warm_start, cfg.model, data)  # checked before a closed-form model ignores it
    if model.closed_form:
        if rank == 0:
            LOGGER.info(f"recscale train: {cfg.model} is fitted in closed form; --warm-start has no weights to "
                        f"carry over, it refits on the whole dataset")
        return
    model.grow_from(state, cfg.warm_start)


def resume_run(run_dir: str | Path, device: str | None = None) -> dict:
    """Continue a run from its `last` checkpoint: same model, optimizer, scaler, RNG streams and
    position in the epoch, so that it ends exactly as an uninterrupted run would. Every worker of a
    torchrun group reads the same checkpoint."""
    run_dir = Path(run_dir)
    if not is_run(run_dir):
        raise RecscaleError(f"--resume: no run at {run_dir} (a run stopped before its first checkpoint "
                            f"leaves none behind: start it again with `recscale train ... --out {run_dir}`)")
    if not has_checkpoint(run_dir):
        raise RecscaleError(f"--resume: {run_dir} was stopped before its first checkpoint; start it again: "
                            f"recscale train --config {run_dir / CONFIG} --out {run_dir}")
    cfg, model_params = read_run_config(run_dir)
    if device:
        cfg = cfg.replace(device=device)
    state = load_checkpoint(run_dir / LAST)
    if "optimizer" not in state:
        raise RecscaleError(f"--resume: {run_dir} holds a closed-form model; there is nothing to resume")
    data = open_data(cfg)
    info = distributed.from_env()
    target = distributed.device_for(info, pick_device(cfg.system.device))
    run = RunDirectory.existing(run_dir) if info.rank == 0 else None
    try:
        with seeded(cfg.system.seed, target), _process_group(info, target):
            model, _ = build_model(cfg, model_params, data, info.world_size, for_training=True)
            place(model, target)
            trainer = build_trainer(cfg, model, data, target, run, info)
            trainer.restore(state, run_dir / LAST)
            if run is not None:
                with atomic_file(run.path / "metrics.jsonl") as tmp:  # exactly the epochs the checkpoint has done
                    tmp.write_text("".join(json.dumps(r) + "\n" for r in trainer.state.history))
            distributed.barrier()
            return _train(trainer, run_dir.absolute())
    finally:
        if run is not None:
            run.close()


def _fit_closed_form(model, data: PreparedDataset, cfg: RunConfig, device, run: RunDirectory | None) -> dict:
    start = time.perf_counter()
    model.fit(sparse_tensor(data.user_items("train")).to(device))
    split = validation_split(data)
    metrics = evaluate(model, data, split, ks=validation_ks(cfg.eval.ks, data), device=device,
                       batch_size=cfg.eval.eval_batch_size, block_bytes=cfg.eval.score_block_mib << 20)
    record = {"epoch": 0, "split": split, "protocol": data.protocol, "train_seconds": time.perf_counter() - start,
              **metrics}
    if run is not None:
        with atomic_file(run.path / "metrics.jsonl") as tmp:
            tmp.write_text(json.dumps(record) + "\n")
        state = {"model": model.state_dict(), "train_state": {"epoch": 1}}
        (run.path / "checkpoints").mkdir(exist_ok=True)
        save_checkpoint(run.path / "checkpoints" / "best.pt", state)
        save_checkpoint(run.path / LAST, state)
        run.publish()
    return record


@dataclasses.dataclass
class LoadedRun:
    """A trained run rebuilt from its directory."""

    path: Path
    config: RunConfig
    model_config: Any
    model: torch.nn.Module
    data: PreparedDataset
    device: torch.device
    checkpoint: str


def load_run(run: str | Path, device: str = "auto", checkpoint: str = "best") -> LoadedRun:
    """The model on `device` with its weights from checkpoints/CHECKPOINT.pt ('best', falling back to
    'last' for a run stopped before its first validation), its prepared dataset and its config."""
    run = Path(run)
    cfg, model_params = read_run_config(run)
    if checkpoint not in ("best", "last"):
        raise RecscaleError(f"--checkpoint: best or last, got {checkpoint!r}")
    if checkpoint == "best" and not (run / "checkpoints" / "best.pt").exists():
        checkpoint = "last"
    data = open_data(cfg)
    model, model_cfg = build_model(cfg, model_params, data)
    path = run / "checkpoints" / f"{checkpoint}.pt"
    load_model_state(model, gather_sharded(path, load_checkpoint(path)))
    target = pick_device(device)
    return LoadedRun(run, cfg, model_cfg, model.to(target), data, target, checkpoint)

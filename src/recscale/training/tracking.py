"""Experiment trackers behind one small callback (`Tracker`): TensorBoard event files in the run
directory, and MLflow runs. Each is told the run's settings once, every epoch's record, and at the
end the best record and the run directory (MLflow keeps a copy as the run's artifacts).

MLflow goes through an `MlflowClient` of its own (no process-wide active run), to
MLFLOW_TRACKING_URI when set, else to a local store: ./mlruns/mlflow.db (SQLite; MLflow 3 keeps the
plain file store in maintenance) with the artifacts beside it in ./mlruns/artifacts.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from recscale.errors import RecscaleError

TRACKERS = ("auto", "tensorboard", "mlflow", "none")
EXPERIMENT = "recscale"
MAX_PARAM = 6000  # MLflow's limit on a parameter's text


class Tracker:
    def start(self, params: dict) -> None:
        pass

    def epoch(self, record: dict) -> None:
        pass

    def finish(self, best: dict, run_dir: Path) -> None:
        pass


def _numbers(record: dict) -> dict[str, float]:
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "epoch"}


def _mlflow_name(key: str) -> str:
    return key.replace("@", "_at_")  # MLflow refuses '@' in metric names: hr@10 -> hr_at_10


class TensorBoard(Tracker):
    """Scalars of every epoch in the run directory (`tensorboard --logdir runs/`). The writer is
    opened at the first epoch: a run is built in a side directory and renamed into place at its
    first checkpoint, and TensorBoard writes its events by path."""

    def __init__(self, run):
        from torch.utils.tensorboard import SummaryWriter
        self.open = lambda: SummaryWriter(str(run.path))
        self.writer = None

    def epoch(self, record: dict) -> None:
        self.writer = self.writer or self.open()
        for key, value in _numbers(record).items():
            self.writer.add_scalar(key, value, record["epoch"])

    def finish(self, best: dict, run_dir: Path) -> None:
        if self.writer is not None:
            self.writer.close()


class MLflow(Tracker):
    """One MLflow run per training run: parameters, per-epoch metrics, the best record as
    `best_*` metrics, and the run directory as artifacts. Metric names say `_at_` for `@`."""

    def __init__(self, name: str):
        try:
            import mlflow
        except ImportError:
            raise RecscaleError("--tracker mlflow: needs MLflow: pip install 'recscale[mlflow]'") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database set-up chatter
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        store = Path.cwd() / "mlruns"
        if not uri:
            store.mkdir(exist_ok=True)
            uri = f"sqlite:///{store / 'mlflow.db'}"
        self.entities = mlflow.entities
        self.client = mlflow.MlflowClient(tracking_uri=uri)
        found = self.client.get_experiment_by_name(EXPERIMENT)
        experiment = found.experiment_id if found else self.client.create_experiment(
            EXPERIMENT, artifact_location=None if os.environ.get("MLFLOW_TRACKING_URI") else (store / "artifacts").as_uri())
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id

    def start(self, params: dict) -> None:
        self.client.log_batch(self.run_id, params=[self.entities.Param(k, str(v)[:MAX_PARAM])
                                                   for k, v in params.items()])

    def epoch(self, record: dict) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.entities.Metric(_mlflow_name(k), v, now, record["epoch"])
                                                    for k, v in _numbers(record).items()])

    def finish(self, best: dict, run_dir: Path) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self.entities.Metric(f"best_{_mlflow_name(k)}", v, now, 0)
                                                    for k, v in _numbers(best).items()])
        self.client.log_artifacts(self.run_id, str(run_dir))
        self.client.set_terminated(self.run_id)


def make_tracker(kind: str, run, name: str) -> Tracker:
    """`kind` of TRACKERS for the RunDirectory `run`; auto: TensorBoard events when tensorboard is
    installed, else none."""
    if kind == "none":
        return Tracker()
    if kind == "mlflow":
        return MLflow(name)
    try:
        return TensorBoard(run)
    except Exception:  # not installed, or a broken install: auto falls back to metrics.jsonl alone
        if kind == "tensorboard":
            raise RecscaleError("--tracker tensorboard: needs TensorBoard: pip install 'recscale[tensorboard]'") from None
        return Tracker()

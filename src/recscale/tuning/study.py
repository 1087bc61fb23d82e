"""`recscale tune`: hyperparameter search on Optuna.

Each trial is an ordinary training run (`training/run.py: start_run`) in OUT/trials/NNNN, with the
trial's values layered over the base settings (model defaults < --config < flags < trial). The
trainer reports each epoch's validation metric (HR@10 under `ncf`, NDCG@100 otherwise: the metric
early stopping uses) to the trial; Optuna's MedianPruner stops a trial whose metric at an epoch is
below the median of the earlier trials at that epoch. Sampler: TPE, seeded.

The study lives in OUT/study.db (SQLite), so a killed `tune` resumes where it stopped: trials that
finished (complete or pruned) stay, a trial that was running when the process died is marked failed
and its parameters are tried again first. One `tune` at a time per OUT (a lock file).

`--jobs J` runs J worker processes on the same study, each with 1/J of the CPUs' threads; each
worker's sampler has its own seed, so results with J > 1 depend on timing (J = 1 is repeatable).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from recscale.config import Layer
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file
from recscale.tuning.space import Param

STUDY_NAME = "recscale"
FINISHED = ("COMPLETE", "PRUNED")


@dataclasses.dataclass
class TuneJob:
    """Everything a worker process needs (picklable)."""

    out: Path
    base: list[Layer]            # run-setting layers, lowest first
    params: Layer                # the base model hyperparameters
    space: list[Param]
    model: str
    trials: int
    timeout: float | None
    seed: int
    threads: int


def _optuna():
    try:
        import optuna
    except ImportError:
        raise RecscaleError("recscale tune needs Optuna: pip install 'recscale[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').absolute()}"


def open_study(job: TuneJob, worker: int = 0):
    optuna = _optuna()
    finished = _count_finished(job.out)
    # another seed for each worker and for each resumption: no trial repeats an earlier draw
    sampler = optuna.samplers.TPESampler(seed=job.seed + 1000 * worker + finished, n_startup_trials=5)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage_url(job.out), direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _count_finished(out: Path) -> int:
    if not (out / "study.db").exists():
        return 0
    optuna = _optuna()
    try:
        study = optuna.load_study(study_name=STUDY_NAME, storage=storage_url(out))
    except KeyError:
        return 0
    return sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _objective(job: TuneJob):
    optuna = _optuna()
    from recscale.training.build import resolve_run_config
    from recscale.training.run import start_run
    from recscale.training.trainer import selection_metric
    from recscale.data.prepared import PreparedDataset

    def objective(trial) -> float:
        values = {p.name: p.suggest(trial) for p in job.space}
        owner = _owners()
        run_values = {k: v for k, v in values.items() if k in owner}
        model_values = {k: v for k, v in values.items() if k not in owner}
        cfg = resolve_run_config(*job.base, Layer(run_values, f"trial {trial.number}"))
        params = Layer({**job.params.values, **model_values}, f"trial {trial.number}", "param")
        metric = selection_metric(PreparedDataset(cfg.data).protocol)

        def report(record: dict) -> None:
            trial.report(float(record[metric]), int(record["epoch"]))
            if trial.should_prune():
                raise optuna.TrialPruned()

        started = time.perf_counter()
        trial.set_user_attr("run", str(job.out / "trials" / f"{trial.number:04d}"))
        try:
            best = start_run(cfg, params, job.out / "trials" / f"{trial.number:04d}", overwrite=True,
                             on_epoch=report)
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - started)
        return float(best[metric])

    return objective


def _owners() -> set[str]:
    from recscale.config import run_field_owner
    return set(run_field_owner())


def _worker(job: TuneJob, worker: int) -> None:
    import torch
    torch.set_num_threads(job.threads)
    optuna = _optuna()
    study = open_study(job, worker)
    stop = optuna.study.MaxTrialsCallback(job.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED))
    remaining = job.trials - _count_finished(job.out)
    if remaining > 0:
        study.optimize(_objective(job), n_trials=remaining, timeout=job.timeout, callbacks=[stop],
                       catch=(RecscaleError,))


@contextlib.contextmanager
def _locked(out: Path):
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".tune.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecscaleError(f"--out: {out} is being tuned by another process") from None
        yield


def _retry_interrupted(job: TuneJob) -> int:
    """Trials left RUNNING by a killed process: mark them failed and queue their values again."""
    optuna = _optuna()
    study = open_study(job)
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING]
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return len(stale)


def tune(job: TuneJob, jobs: int = 1, log=sys.stderr) -> dict:
    """Run (or resume) the study; write trials.tsv, best.toml and the plots; return a summary."""
    with _locked(job.out):
        retried = _retry_interrupted(job)
        if retried:
            print(f"tune: {retried} trial(s) interrupted by a stop are tried again", file=log)
        done = _count_finished(job.out)
        if done:
            print(f"tune: resuming {job.out}: {done} of {job.trials} trials already finished", file=log)
        if jobs == 1:
            _worker(job, 0)
        else:
            # Workers share the cores: idle OpenMP threads should sleep, not spin on a core another
            # worker needs (each kept 0.56x of a lone run instead of 0.41x, BENCHMARKS.md: CPU
            # contention). Not the default for a lone run: sleeping threads cost small steps up to 2x.
            # Spawned workers inherit the environment and read it when torch loads OpenMP.
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
            context = multiprocessing.get_context("spawn")
            workers = [context.Process(target=_worker, args=(job, w)) for w in range(jobs)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()
            failed = [w.exitcode for w in workers if w.exitcode]
            if failed:
                raise RecscaleError(f"--jobs: {len(failed)} worker(s) failed (exit codes {failed})")
        return summarize(job)


def summarize(job: TuneJob) -> dict:
    optuna = _optuna()
    study = open_study(job)
    trials = study.get_trials(deepcopy=False)
    with atomic_file(job.out / "trials.tsv") as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["trial", "state", "value", "epochs", "seconds", *[p.name for p in job.space]])
            for t in trials:
                writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                                 len(t.intermediate_values), f"{t.user_attrs.get('seconds', 0):.1f}",
                                 *[t.params.get(p.name, "") for p in job.space]])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecscaleError(f"tune: no trial completed (see {job.out / 'trials.tsv'})")
    best = max(complete, key=lambda t: t.value)
    run = Path(best.user_attrs["run"])
    with atomic_file(job.out / "best.toml") as tmp:
        shutil.copyfile(run / "config.toml", tmp)
    plots = _plots(study, job.out)
    return {"trials": len(trials), "complete": len(complete),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "best_trial": best.number, "best_value": best.value, "best_params": best.params, "best_run": str(run),
            "plots": plots}


def _plots(study, out: Path) -> list[str]:
    """Optimisation history and parameter importances (with matplotlib; importances need two or
    more complete trials that differ)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as plots
    except ImportError:
        return []
    written = []
    for name, draw in (("history.png", plots.plot_optimization_history), ("importance.png", plots.plot_param_importances)):
        try:
            axes = draw(study)
            with atomic_file(out / name) as tmp:
                axes.figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
    return written


"""`recscale tune`: hyperparameter search on Optuna.

Each trial is an ordinary training run (`training/run.py: start_run`) in OUT/trials/NNNN, with the
trial's values layered over the base settings (model defaults < --config < flags < trial). The
trainer reports each epoch's validation metric (HR@10 under `ncf`, NDCG@100 otherwise: the metric
early stopping uses) to the trial; Optuna's MedianPruner stops a trial whose metric at an epoch is
below the median of the earlier trials at that epoch. Sampler: TPE, seeded.

The study lives in OUT/study.db (SQLite), so a killed `tune` resumes where it stopped: trials that
finished (complete or pruned) stay, a trial that was running when the process died is marked failed
and its parameters are tried again first. One `tune` at a time per OUT (a lock file).

A study remembers what it searched (model, the dataset's meta.json digest, protocol, space):
resuming it with anything else is refused in one line (another `--study NAME` in the same OUT, or
`--overwrite` to start that study afresh, which deletes only that study's trials and outputs).
Studies other than the default one keep their trials in OUT/trials/NAME/ and write
trials-NAME.tsv and best-NAME.toml.

`--jobs J` runs J worker processes on the same study, each with 1/J of the CPUs' threads; each
worker's sampler has its own seed, so results with J > 1 depend on timing (J = 1 is repeatable).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

from recscale.config.layers import Layer
from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file, refuse_if_input
from recscale.progress import bar
from recscale.tuning.space import Param

STUDY_NAME = "recscale"
STUDY_NAMES = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # never a trial number: no clash in OUT/trials
FINISHED = ("COMPLETE", "PRUNED")
FINGERPRINT = "recscale_fingerprint"  # the study's user attribute: what it searched
OUTPUTS = ("trials.tsv", "best.toml", "history.png", "importance.png")


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
    study: str = STUDY_NAME
    fingerprint: dict = dataclasses.field(default_factory=dict)
    overwrite: bool = False

    def trials_dir(self) -> Path:
        return self.out / "trials" if self.study == STUDY_NAME else self.out / "trials" / self.study

    def output(self, name: str) -> Path:
        """OUT/trials.tsv for the default study, OUT/trials-NAME.tsv for another."""
        if self.study == STUDY_NAME:
            return self.out / name
        stem, dot, suffix = name.partition(".")
        return self.out / f"{stem}-{self.study}{dot}{suffix}"


def fingerprint(model: str, data: str | Path, protocol: str, space: list[Param]) -> dict:
    """What a study searches; a study is only ever resumed with the same."""
    meta = Path(data) / "meta.json"
    return {"model": model, "dataset_sha256": hashlib.sha256(meta.read_bytes()).hexdigest(), "protocol": protocol,
            "space": json.loads(json.dumps([dataclasses.asdict(p) for p in space]))}


def check_study_name(name: str) -> str:
    if not STUDY_NAMES.fullmatch(name):
        raise RecscaleError(f"--study: a letter, then letters, digits, '-' or '_' (64 at most), got {name!r}")
    return name


def check_out(out: Path, inputs) -> None:
    """OUT is a tune directory (study.db), an empty or new directory, and holds none of the inputs."""
    refuse_if_input(out, inputs)
    if out.exists() and not out.is_dir():
        raise RecscaleError(f"--out: {out} is a file, expected a study directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "study.db").is_file():
        raise RecscaleError(f"--out: {out} is a directory that is not a tune study (no study.db); choose another --out")

def _optuna():
    try:
        import optuna
    except ImportError:
        raise RecscaleError("recscale tune needs Optuna: pip install 'recscale[tune]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # "MaxTrialsCallback is experimental" and the like say nothing to someone tuning a model
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def storage_url(out: Path) -> str:
    return f"sqlite:///{(out / 'study.db').absolute()}"


def open_study(job: TuneJob, worker: int = 0):
    optuna = _optuna()
    finished = _count_finished(job)
    # another seed for each worker and for each resumption: no trial repeats an earlier draw
    sampler = optuna.samplers.TPESampler(seed=job.seed + 1000 * worker + finished, n_startup_trials=5)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.create_study(study_name=job.study, storage=storage_url(job.out), direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def _existing(job: TuneJob):
    if not (job.out / "study.db").exists():
        return None
    optuna = _optuna()
    try:
        return optuna.load_study(study_name=job.study, storage=storage_url(job.out))
    except KeyError:
        return None


def _count_finished(job: TuneJob) -> int:
    study = _existing(job)
    return 0 if study is None else sum(t.state.name in FINISHED for t in study.get_trials(deepcopy=False))


def _claim_study(job: TuneJob) -> None:
    """Refuse to resume a study that searched something else; with `overwrite` delete the study
    (its trials, and its outputs) first. A new study records what it searches."""
    study = _existing(job)
    if study is not None and job.overwrite:
        _optuna().delete_study(study_name=job.study, storage=storage_url(job.out))
        if job.trials_dir().is_dir():
            for trial in job.trials_dir().iterdir():
                if re.fullmatch(r"\d{4,}", trial.name):  # only the trial runs we made
                    shutil.rmtree(trial)
        for name in OUTPUTS:
            job.output(name).unlink(missing_ok=True)
        study = None
    if study is not None:
        recorded = study.user_attrs.get(FINGERPRINT)
        if recorded is None:  # a study opened without tune() (or by a recscale before fingerprints): adopt it
            study.set_user_attr(FINGERPRINT, job.fingerprint)
        elif recorded != job.fingerprint:
            differ = [k for k in job.fingerprint if (recorded or {}).get(k) != job.fingerprint[k]]
            raise RecscaleError(f"--out: {job.out}: study {job.study!r} was made for another "
                                f"{', '.join(differ) or 'search'}; pick a new --study NAME, or --overwrite to "
                                f"start it afresh")
        return
    open_study(job).set_user_attr(FINGERPRINT, job.fingerprint)


def _objective(job: TuneJob):
    optuna = _optuna()
    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.training.build import resolve_run_config
    from recscale.training.run import start_run
    from recscale.training.trainer import selection_metric

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
        trial.set_user_attr("run", str(job.trials_dir() / f"{trial.number:04d}"))
        try:
            best = start_run(cfg, params, job.trials_dir() / f"{trial.number:04d}", overwrite=True,
                             on_epoch=report, label=f"{cfg.model} trial {trial.number}")
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - started)
        return float(best[metric])

    return objective


def _owners() -> set[str]:
    from recscale.config.run import run_field_owner
    return set(run_field_owner())


def _worker(job: TuneJob, worker: int) -> None:
    import torch
    torch.set_num_threads(job.threads)
    optuna = _optuna()
    study = open_study(job, worker)
    stop = optuna.study.MaxTrialsCallback(job.trials, states=(optuna.trial.TrialState.COMPLETE,
                                                              optuna.trial.TrialState.PRUNED))
    remaining = job.trials - _count_finished(job)
    if remaining > 0:
        with bar(total=remaining, desc=f"tune {job.model}", unit="trial", enabled=worker == 0) as shown:
            study.optimize(_objective(job), n_trials=remaining, timeout=job.timeout,
                           callbacks=[stop, lambda study, trial: _show_trial(shown, study)], catch=(RecscaleError,))


def _show_trial(shown, study) -> None:
    """One more trial on the bar, with the best value so far."""
    shown.update()
    finished = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if finished:
        shown.set_postfix_str(f"best {max(t.value for t in finished):.4f}")


@contextlib.contextmanager
def _locked(out: Path):
    out = out.resolve()  # the lock of the directory, whatever path reaches it
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
    """Run (or resume) the study; write trials.tsv, best.toml and the plots; return a summary.
    A study storage that cannot be written (full disk, read-only folder) is one line; a study
    directory this call created is removed again when it fails."""
    created = not job.out.exists()
    try:
        return _tune(job, jobs, log)
    except BaseException as exc:
        if created:
            shutil.rmtree(job.out, ignore_errors=True)
        if _is_storage_error(exc):
            first = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise RecscaleError(f"--out: {job.out / 'study.db'}: cannot write the study: {first}") from None
        raise


def _is_storage_error(exc: BaseException) -> bool:
    """SQLAlchemy's errors (what SQLite reports of a full disk) and Optuna's own storage errors."""
    names = {cls.__module__.split(".")[0] for cls in type(exc).__mro__}
    return "sqlalchemy" in names or type(exc).__name__ == "StorageInternalError"


def _tune(job: TuneJob, jobs: int, log) -> dict:
    with _locked(job.out):
        _claim_study(job)
        retried = _retry_interrupted(job)
        if retried:
            print(f"tune: {retried} trial(s) interrupted by a stop are tried again", file=log)
        done = _count_finished(job)
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
    with atomic_file(job.output("trials.tsv")) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(["trial", "state", "value", "epochs", "seconds", *[p.name for p in job.space]])
            for t in trials:
                writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6f}",
                                 len(t.intermediate_values), f"{t.user_attrs.get('seconds', 0):.1f}",
                                 *[t.params.get(p.name, "") for p in job.space]])
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise RecscaleError(f"tune: no trial completed (see {job.output('trials.tsv')})")
    best = max(complete, key=lambda t: t.value)
    run = Path(best.user_attrs["run"])
    with atomic_file(job.output("best.toml")) as tmp:
        shutil.copyfile(run / "config.toml", tmp)
    plots = _plots(study, job)
    return {"trials": len(trials), "complete": len(complete),
            "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in trials),
            "best_trial": best.number, "best_value": best.value, "best_params": best.params, "best_run": str(run),
            "plots": plots}


def _plots(study, job: TuneJob) -> list[str]:
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
            with atomic_file(job.output(name)) as tmp:
                axes.figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
            plt.close(axes.figure)
            written.append(name)
        except (ValueError, RuntimeError, ZeroDivisionError):
            continue
    return written


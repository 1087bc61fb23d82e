"""`recscale tune`: spaces are checked, trials run, prune and resume, and best.toml reproduces."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest

from recscale.config.layers import Layer
from recscale.config.prepare import PrepareConfig
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.models.ncf import NeuMFConfig
from recscale.tuning.space import parse_space, read_space
from tests.helpers import synthetic_raw

NCF_FIELDS = {"factors", "layers", "dropout", "embedding_gradients", "pretrained_gmf", "pretrained_mlp"}


@pytest.mark.parametrize("text, message", [
    ('[lrr]\ntype = "log"\nlow = 0.1\nhigh = 1.0', r"\[lrr\] is neither a `recscale train` setting"),
    ('[lr]\ntype = "log"\nlow = 0.1\nhigh = 0.01', r"\[lr\] low \(0.1\) is above high \(0.01\)"),
    ('[lr]\ntype = "log"\nlow = 0.0\nhigh = 0.01', r"\[lr\] a log scale needs low > 0"),
    ('[factors]\ntype = "int"\nlow = 8.5\nhigh = 64', r"\[factors\] low: expected an integer"),
    ('[factors]\ntype = "int"\nlow = "8"\nhigh = 64', r"\[factors\] low: expected a finite number"),
    ('[lr]\ntype = "gauss"\nlow = 0.1\nhigh = 1.0', r"\[lr\] type: one of log, uniform, int, categorical"),
    ('[layers]\ntype = "categorical"\nchoices = []', r"\[layers\] choices: expected a non-empty list"),
    ('[lr]\ntype = "log"\nlow = 0.1\nhigh = 1.0\nstep = 2', r"\[lr\] unknown field\(s\) step"),
    ("lr = 0.1", r"\[lr\] must be a table"),
    ("[lr", r"not TOML"),
])
def test_a_bad_space_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text)
    with pytest.raises(RecscaleError, match=message) as error:
        read_space(path, NCF_FIELDS)
    assert "\n" not in str(error.value)


def test_every_default_space_is_valid():
    import dataclasses

    from recscale.models.registry import MODELS
    for name, cls in MODELS.items():
        if cls.tune_space:
            space = parse_space(name, cls.tune_space, {f.name for f in dataclasses.fields(cls.Config)})
            assert {p.name for p in space} == set(cls.tune_space)
    assert set(NCF_FIELDS) == {f.name for f in dataclasses.fields(NeuMFConfig)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "data"
    prepare(synthetic_raw(n_users=120, n_items=150, per_user=20), PrepareConfig(protocol="ncf", test_negatives=20), out)
    return out


SPACE = """
[lr]
type = "log"
low = 1e-4
high = 5e-2

[factors]
type = "int"
low = 4
high = 16
"""

BASE = ["--model", "gmf", "--epochs", "3", "--batch-size", "1024", "--device", "cpu", "--seed", "3", "--no-progress"]


def _tune(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "recscale", "tune", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


def _rows(out):
    with open(out / "trials.tsv") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


@pytest.mark.slow
def test_tune_runs_trials_and_best_toml_reproduces_the_best_trial(tiny, tmp_path):
    (tmp_path / "space.toml").write_text(SPACE)
    out = tmp_path / "study"
    done = _tune(["--data", str(tiny), *BASE, "--space", str(tmp_path / "space.toml"), "--trials", "3",
                  "--out", str(out)])
    assert done.returncode == 0, done.stderr
    rows = _rows(out)
    assert len(rows) == 3 and all(r["state"] in ("COMPLETE", "PRUNED") for r in rows)
    assert "best: trial" in done.stdout and (out / "best.toml").exists() and (out / "history.png").exists()
    best = max((r for r in rows if r["state"] == "COMPLETE"), key=lambda r: float(r["value"]))
    again = subprocess.run([sys.executable, "-m", "recscale", "train", "--config", str(out / "best.toml"),
                            "--out", str(tmp_path / "again")], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    records = [json.loads(x) for x in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]
    assert max(r["hr@10"] for r in records) == pytest.approx(float(best["value"]), abs=1e-6)


@pytest.mark.slow
def test_a_trial_below_the_median_is_pruned(prepared, tmp_path):
    import optuna

    from recscale.training.build import resolve_run_config
    from recscale.tuning.study import TuneJob, open_study, tune
    space = parse_space("test", {"lr": {"type": "log", "low": 1e-7, "high": 1e-1}}, NCF_FIELDS)
    # the embedded data: the tiny synthetic log has nothing to learn, so no trial rises above another
    data = prepared("ncf").root
    cfg = resolve_run_config({"data": str(data), "model": "gmf", "epochs": 4, "batch_size": 8192, "device": "cpu",
                              "progress": False, "patience": 10})
    job = TuneJob(tmp_path / "study", [Layer(cfg.flat(), "test")], Layer({}, "test"), space, "gmf", 3, None, 0, 1)
    (tmp_path / "study").mkdir()
    study = open_study(job)
    # the same learning run twice, then one that cannot learn: below their median by the third epoch
    for lr in (1e-2, 1e-2, 1e-7):
        study.enqueue_trial({"lr": lr})
    summary = tune(job)
    states = [(t.params["lr"], t.state) for t in open_study(job).get_trials()]
    assert states[2] == (1e-7, optuna.trial.TrialState.PRUNED) and summary["pruned"] == 1
    pruned = next(r for r in _rows(tmp_path / "study") if r["state"] == "PRUNED")
    assert int(pruned["epochs"]) < 4  # stopped before the run's last epoch


@pytest.mark.slow
def test_a_killed_tune_resumes_without_repeating_finished_trials(tiny, tmp_path):
    import optuna
    (tmp_path / "space.toml").write_text(SPACE)
    out = tmp_path / "study"
    args = ["--data", str(tiny), *BASE[:2], "--epochs", "6", *BASE[4:], "--space", str(tmp_path / "space.toml"),
            "--trials", "3", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "recscale", "tune", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{out / 'study.db'}"
    deadline = time.monotonic() + 300
    before = []
    while time.monotonic() < deadline:  # kill once a trial finished and the next one is running
        time.sleep(0.3)
        try:
            trials = optuna.load_study(study_name="recscale", storage=storage).get_trials()
        except Exception:  # not created yet
            continue
        if any(t.state.name == "COMPLETE" for t in trials) and any(t.state.name == "RUNNING" for t in trials):
            before = trials
            break
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert before, "no trial finished in time"
    finished = {t.number: (t.value, t.params) for t in before if t.state.name == "COMPLETE"}
    interrupted = [t.params for t in before if t.state.name == "RUNNING"]

    resumed = _tune(args)
    assert resumed.returncode == 0, resumed.stderr
    assert "tried again" in resumed.stderr
    trials = optuna.load_study(study_name="recscale", storage=storage).get_trials()
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 3
    for number, (value, params) in finished.items():  # kept, not run again
        assert trials[number].value == value and trials[number].params == params
    retried = [t for t in trials if t.number > max(t.number for t in before)]
    assert retried[0].params == interrupted[0]  # the interrupted values come first

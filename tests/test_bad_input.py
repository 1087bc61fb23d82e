"""Hardening (issue 13): no hangs, ids that round-trip exactly, runs that are never corrupted or
lost, bad data refused at the boundary, one-line errors instead of tracebacks, full disks."""

from __future__ import annotations

import concurrent.futures
import errno
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from recscale.cli import main
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.fsutil import sha256_file
from recscale.training.run import read_run_config
from recscale.training.rundir import RunLock
from tests.helpers import synthetic_raw, write_ratings


def _run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _one_line_error(err: str, command: str) -> bool:
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("note:", "epoch "))]
    return len(lines) == 1 and lines[0].startswith((f"recscale {command}: error:", "recscale: error:")) \
        and "Traceback" not in err


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A prepared ncf dataset: 40 users x 60 items."""
    out = tmp_path_factory.mktemp("hard") / "ncf"
    prepare(synthetic_raw(n_users=40, n_items=60, per_user=15), PrepareConfig(protocol="ncf", test_negatives=10), out)
    return out


def _train_args(data, out, *extra):
    return ["train", "--data", data, "--model", "gmf", "--epochs", "1", "--batch-size", "256", "--device", "cpu",
            "--out", out, *extra]


# ----------------------------------------------------------------------------- no hangs


def test_a_user_with_every_item_trains_instead_of_hanging(tmp_path, capsys):
    # the reproduction from the issue: user 1 has both items; it used to spin forever at 100% CPU
    ratings = write_ratings(tmp_path / "a.csv", ["1,1,5,1", "1,2,5,2", "2,1,3,3"])
    assert _run(["prepare", "--ratings", ratings, "--out", tmp_path / "ai", "--test-negatives", "1"], capsys)[0] == 0
    started = time.monotonic()
    code, _, err = _run(["train", "--data", tmp_path / "ai", "--model", "gmf", "--epochs", "1", "--negatives", "1",
                         "--device", "cpu", "--out", tmp_path / "ar"], capsys)
    assert code == 0 and time.monotonic() - started < 60
    assert "1 user(s) interacted with every item" in err
    # asking for as many negatives as there are items is refused up front, nothing written
    code, _, err = _run(["train", "--data", tmp_path / "ai", "--model", "gmf", "--device", "cpu",
                         "--out", tmp_path / "ar2"], capsys)
    assert code == 2 and "--negatives: 4 is not below the 2 items" in err and not (tmp_path / "ar2").exists()


@pytest.mark.slow
def test_a_stop_signal_ends_even_a_step_that_never_finishes(tmp_path):
    script = textwrap.dedent("""
        import time
        from recscale.training import run
        run.STOP_GRACE_SECONDS = 1.0
        class Stuck:
            stop_signal = None
        with run.graceful_stop(Stuck()):
            print("ready", flush=True)  # the handler is in place
            time.sleep(120)  # a step that does not end
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - started < 10
    assert "did not end within 1s of the stop signal" in err


def test_a_diverging_run_stops_with_a_clear_message_and_is_not_kept(small, tmp_path, capsys):
    code, _, err = _run(_train_args(small, tmp_path / "nan", "--lr", "1e30", "--optimizer", "sgd"), capsys)
    assert code == 2 and "the training loss became" in err and _one_line_error(err, "train")
    assert not (tmp_path / "nan").exists() and not list(tmp_path.glob(".nan.*"))


# ----------------------------------------------------------------------------- ids round-trip

TEXT_ID = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zs", "Zl", "Zp")), min_size=1,
                  max_size=12).filter(lambda s: not s.lstrip("+-").isdigit() and s.strip() == s)
INT_ID = st.integers(-(2**63), 2**63 - 1)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(users=st.lists(st.one_of(TEXT_ID, INT_ID), min_size=3, max_size=6, unique_by=str),
       items=st.lists(st.one_of(TEXT_ID, INT_ID), min_size=4, max_size=8, unique_by=str),
       text_users=st.booleans(), fmt=st.sampled_from(["csv", "parquet"]))
def test_ids_round_trip_exactly_through_prepare_train_and_recommend(tmp_path_factory, capsys, users, items,
                                                                    text_users, fmt):
    work = tmp_path_factory.mktemp("ids")
    users = [str(u) for u in users] if text_users else [u for u in users if isinstance(u, int)] or [1, 2, 3]
    rows = [(u, i, 4.0, t) for t, (u, i) in enumerate((u, i) for u in users for i in items[: 2 + len(str(u)) % 3])]
    frame = pl.DataFrame(rows, schema={"u": pl.Utf8 if text_users else pl.Int64, "i": pl.Utf8,
                                       "rating": pl.Float64, "timestamp": pl.Int64}, orient="row")
    if all(isinstance(i, int) for i in items):
        frame = frame.with_columns(pl.col("i").cast(pl.Int64))
    path = work / f"log.{fmt}"
    frame.write_parquet(path) if fmt == "parquet" else frame.write_csv(path)
    assert _run(["prepare", "--ratings", path, "--user-col", "u", "--item-col", "i", "--protocol", "random",
                 "--ratios", "1,0,0", "--out", work / "d"], capsys)[0] == 0
    data = PreparedDataset(work / "d")
    assert sorted(map(str, data.original_user_ids())) == sorted(map(str, users))
    assert sorted(map(str, data.original_item_ids())) == sorted({str(i) for _, i, _, _ in rows})
    assert _run(["train", "--data", work / "d", "--model", "popularity", "--device", "cpu", "--out", work / "r"],
                capsys)[0] == 0
    (work / "users.txt").write_text("".join(f"{u}\n" for u in users))
    code, _, err = _run(["recommend", "--run", work / "r", "--users", work / "users.txt", "--k", "2",
                         "--out", work / "recs.tsv"], capsys)
    assert code == 0 and "skipped" not in err, err
    served = [line.split("\t") for line in (work / "recs.tsv").read_text().splitlines()[1:]]
    by_user = {}
    for user, _, item, _, _ in served:
        by_user.setdefault(user, []).append(item)
    seen = {(str(u), str(i)) for u, i, _, _ in rows}
    for user, recs in by_user.items():
        assert all((user, item) not in seen for item in recs)
    # every user with an unseen item of the catalog is served, under its own id
    catalog = {str(i) for _, i, _, _ in rows}
    assert set(by_user) == {str(u) for u in users if len(catalog) > len(items[: 2 + len(str(u)) % 3])}


def test_non_integral_float_ids_and_non_finite_ratings_are_refused(tmp_path):
    from recscale.data.ingest.readers import read_interactions
    pl.DataFrame({"userId": [1.0, 1.5], "movieId": [1, 2], "rating": [4.0, 5.0], "timestamp": [1, 2]}).write_parquet(
        tmp_path / "f.parquet")
    with pytest.raises(RecscaleError, match=r"f.parquet: row 2: userId is not an integer id: 1.5"):
        read_interactions(tmp_path / "f.parquet")
    pl.DataFrame({"userId": [1.0, 2.0], "movieId": [1, 2], "rating": [4.0, float("inf")], "timestamp": [1, 2]}
                 ).write_parquet(tmp_path / "g.parquet")
    with pytest.raises(RecscaleError, match=r"g.parquet: row 2: rating is not a finite number: inf"):
        read_interactions(tmp_path / "g.parquet")
    write_ratings(tmp_path / "h.csv", ["1,1,4,1", "2,1,inf,2"])
    with pytest.raises(RecscaleError, match=r"h.csv:3: rating is not a finite number: 'inf'"):
        read_interactions(tmp_path / "h.csv")
    pl.DataFrame({"userId": [1.0, 2.0], "movieId": [1, 2], "rating": [4.0, 5.0], "timestamp": [1, 2]}).write_parquet(
        tmp_path / "ok.parquet")
    assert read_interactions(tmp_path / "ok.parquet")["user"].to_list() == [1, 2]


def test_encoding_problems_are_located_and_a_bom_is_accepted(tmp_path):
    from recscale.data.ingest.readers import read_interactions
    (tmp_path / "bad.csv").write_bytes(b"userId,movieId,rating,timestamp\n1,2,3,4\n1,\xff,3,4\n")
    with pytest.raises(RecscaleError, match=r"bad.csv:3: not UTF-8 text"):
        read_interactions(tmp_path / "bad.csv")
    (tmp_path / "bom.csv").write_bytes("\ufeffuserId,movieId,rating,timestamp\n1,2,3,4\n".encode())
    assert read_interactions(tmp_path / "bom.csv").rows() == [(1, 2, 3.0, 4)]
    (tmp_path / "mac.csv").write_bytes(b"userId,movieId,rating,timestamp\r1,2,3,4\r")
    with pytest.raises(RecscaleError, match=r"mac.csv: lines end with a lone carriage return"):
        read_interactions(tmp_path / "mac.csv")


def test_meta_json_is_strict_json_and_must_match_its_files(small, tmp_path):
    json.loads((small / "meta.json").read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    import shutil
    lying = tmp_path / "lying"
    shutil.copytree(small, lying)
    meta = json.loads((lying / "meta.json").read_text())
    meta["counts"]["train"] += 5
    (lying / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecscaleError, match=r"train.parquet: \d+ rows, but meta.json says \d+"):
        PreparedDataset(lying)
    meta["counts"]["train"] -= 5
    meta["counts"]["items"] = 3
    (lying / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RecscaleError, match=r"item id \d+ is outside the 3 items of meta.json"):
        PreparedDataset(lying)


# ----------------------------------------------------------------------------- runs never corrupted or lost


def test_a_second_writer_of_a_run_is_refused_naming_the_holder(small, tmp_path, capsys):
    lock = RunLock((tmp_path / "run").absolute()).acquire()
    try:
        code, _, err = _run(_train_args(small, tmp_path / "run"), capsys)
    finally:
        lock.release()
    assert code == 2 and f"pid {os.getpid()}" in err and "in use by recscale" in err
    assert not (tmp_path / "run").exists()
    assert _run(_train_args(small, tmp_path / "run"), capsys)[0] == 0  # free again


def _start(args):
    return subprocess.Popen([sys.executable, "-m", "recscale", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_overwrite_keeps_the_old_run_until_the_new_one_has_a_checkpoint(small, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(_train_args(small, run), capsys)[0] == 0
    assert _run(["evaluate", "--run", run], capsys)[0] == 0
    before = sha256_file(run / "checkpoints" / "last.pt")
    # killed while building the new run aside: the old run is untouched
    proc = _start(_train_args(small, run, "--overwrite", "--epochs", "200", "--batch-size", "16"))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run.new-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)
    assert sha256_file(run / "checkpoints" / "last.pt") == before and (run / "eval-test.json").is_file()
    # a finished overwrite replaces the run whole: no output of the old run stays beside the new model
    assert _run(_train_args(small, run, "--overwrite", "--epochs", "2"), capsys)[0] == 0
    assert not (run / "eval-test.json").exists() and not list(tmp_path.glob(".run.*-*"))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow
def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(small, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start(_train_args(small, run, "--epochs", "200", "--batch-size", "16"))
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob(".run.new-*/config.toml")) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait(30)
    assert not run.exists()
    code, _, err = _run(["train", "--resume", run], capsys)
    assert code == 2 and "leaves none behind: start it again" in err
    assert _run(_train_args(small, run), capsys)[0] == 0
    assert not list(tmp_path.glob(".run.new-*"))  # the dead start's aside directory is gone


def test_a_run_finds_its_dataset_from_anywhere_and_says_when_it_moved(small, tmp_path, monkeypatch, capsys):
    import shutil
    project = tmp_path / "project"
    shutil.copytree(small, project / "data")
    monkeypatch.chdir(project)
    assert _run(_train_args("data", "runs/gmf"), capsys)[0] == 0
    monkeypatch.chdir(tmp_path)
    assert _run(["evaluate", "--run", project / "runs" / "gmf"], capsys)[0] == 0
    shutil.move(project, tmp_path / "moved")  # run and data moved together: found relative to the run
    assert _run(["evaluate", "--run", tmp_path / "moved" / "runs" / "gmf"], capsys)[0] == 0
    shutil.move(tmp_path / "moved" / "data", tmp_path / "elsewhere")
    code, _, err = _run(["evaluate", "--run", tmp_path / "moved" / "runs" / "gmf"], capsys)
    assert code == 2 and "its dataset" in err and "is gone (moved or deleted" in err
    prepare(synthetic_raw(n_users=40, n_items=60, per_user=15, seed=9), PrepareConfig(protocol="ncf", test_negatives=10),
            tmp_path / "moved" / "data")  # a different dataset where the run's was
    code, _, err = _run(["evaluate", "--run", tmp_path / "moved" / "runs" / "gmf"], capsys)
    assert code == 2 and "changed since this run was trained" in err


def test_synth_writes_beside_other_files_and_outputs_follow_the_umask(tmp_path, capsys):
    out = tmp_path / "raw"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    old = os.umask(0o027)
    try:
        args = ["datasets", "synth", "--users", "50", "--items", "40", "--interactions", "400", "--out", out]
        assert _run(args, capsys)[0] == 0
        assert (out / "notes.txt").read_text() == "mine"
        assert (out / "ratings.csv").stat().st_mode & 0o777 == 0o640
        code, _, err = _run(args, capsys)
        assert code == 2 and "ratings.csv: already exists" in err
        assert _run([*args, "--overwrite"], capsys)[0] == 0
        assert _run(["prepare", "--ratings", out / "ratings.csv", "--test-negatives", "5", "--out", tmp_path / "p"],
                    capsys)[0] == 0
        assert (tmp_path / "p").stat().st_mode & 0o777 == 0o750
        assert (tmp_path / "p" / "meta.json").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- one line, not a traceback


def test_checkpoints_of_another_model_or_without_keys_are_one_line_errors(small, tmp_path, capsys):
    assert _run(_train_args(small, tmp_path / "gmf"), capsys)[0] == 0
    assert _run(["train", "--data", small, "--model", "mlp", "--epochs", "1", "--device", "cpu",
                 "--out", tmp_path / "mlp"], capsys)[0] == 0
    from recscale.tensorfiles import load_checkpoint, save_checkpoint
    state = load_checkpoint(tmp_path / "gmf" / "checkpoints" / "best.pt")
    save_checkpoint(tmp_path / "mlp" / "checkpoints" / "best.pt", state)  # valid checksum, wrong model
    code, _, err = _run(["evaluate", "--run", tmp_path / "mlp"], capsys)
    assert code == 2 and "checkpoint does not fit the model" in err and _one_line_error(err, "evaluate")
    save_checkpoint(tmp_path / "mlp" / "checkpoints" / "best.pt", {"weights": torch.zeros(2)})
    code, _, err = _run(["evaluate", "--run", tmp_path / "mlp"], capsys)
    assert code == 2 and "not a recscale checkpoint" in err and _one_line_error(err, "evaluate")


def test_output_paths_that_are_directories_are_one_line_errors(small, tmp_path, capsys):
    assert _run(_train_args(small, tmp_path / "run"), capsys)[0] == 0
    (tmp_path / "recs.tsv").mkdir()
    code, _, err = _run(["recommend", "--run", tmp_path / "run", "--all", "--out", tmp_path / "recs.tsv"], capsys)
    assert code == 2 and "recs.tsv: is a directory" in err and _one_line_error(err, "recommend")
    (tmp_path / "notrun").mkdir()
    (tmp_path / "notrun" / "mine.txt").write_text("x")
    code, _, err = _run(_train_args(small, tmp_path / "notrun", "--overwrite"), capsys)
    assert code == 2 and "is not a run directory" in err and (tmp_path / "notrun" / "mine.txt").exists()


# ----------------------------------------------------------------------------- full disks


def _limited(args, limit_bytes: int, cwd) -> subprocess.CompletedProcess:
    """Run recscale with RLIMIT_FSIZE: a write past `limit_bytes` fails as on a full disk (EFBIG)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return subprocess.run([sys.executable, "-m", "recscale", *map(str, args)], capture_output=True, text=True,
                          preexec_fn=limit, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_a_full_disk_is_one_line_and_keeps_the_previous_good_files(small, tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(_train_args(small, run), capsys)[0] == 0
    assert _run(["recommend", "--run", run, "--all", "--out", tmp_path / "recs.tsv"], capsys)[0] == 0
    assert _run(["evaluate", "--run", run], capsys)[0] == 0
    assert _run(["export", "--run", run, "--out", tmp_path / "bundle"], capsys)[0] == 0
    good = {p: sha256_file(p) for p in (run / "checkpoints" / "last.pt", tmp_path / "recs.tsv", run / "eval-test.json",
                                        tmp_path / "bundle" / "manifest.json", tmp_path / "bundle" / "model.pt2")}
    cases = [
        # torch's archive writer used to abort the interpreter here (issue 27)
        (["export", "--run", run, "--out", tmp_path / "bundle", "--overwrite"], 16 * 1024),
        (["tune", "--data", small, "--model", "gmf", "--epochs", "1", "--trials", "1", "--device", "cpu",
          "--out", tmp_path / "study"], 16 * 1024),
        (["datasets", "synth", "--users", "200", "--items", "150", "--interactions", "4000", "--out",
          tmp_path / "synth"], 16 * 1024),
        (["prepare", "--dataset", "ml-latest-small", "--out", small, "--overwrite"], 64 * 1024),
        (_train_args(small, run, "--overwrite", "--epochs", "2"), 8 * 1024),
        (["recommend", "--run", run, "--all", "--k", "50", "--out", tmp_path / "recs.tsv", "--overwrite"], 4 * 1024),
        (["evaluate", "--run", run, "--k", "1,2,3,4,5,6,7,8,9"], 512),
    ]
    # two at a time (2 cores): each case writes its own output and only reads the run
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda case: (case[0], _limited(case[0], case[1], tmp_path)), cases))
    for args, done in results:
        assert done.returncode == 2, (args, done.stderr)
        # SQLite (tune's study) words EFBIG as its own "disk I/O error"
        reason = "File too large" in done.stderr or "disk I/O error" in done.stderr
        assert "cannot" in done.stderr and reason and done.stderr.count("\n") == 1, done.stderr
    assert {p: sha256_file(p) for p in good} == good
    assert PreparedDataset(small).n_users == 40
    assert not [p for p in tmp_path.rglob(".*tmp-*")] and not list(tmp_path.glob(".run.new-*"))
    assert not (tmp_path / "study").exists()
    assert not (tmp_path / "synth" / "ratings.csv").exists()


def test_enospc_while_writing_names_the_file(tmp_path, monkeypatch):
    from recscale.fsutil import atomic_file
    target = tmp_path / "out.json"
    target.write_text("previous")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(RecscaleError, match=r"out.json: cannot write: No space left on device"):
        with atomic_file(target) as tmp:
            monkeypatch.setattr(Path, "write_text", full)
            tmp.write_text("new")
    monkeypatch.undo()
    assert target.read_text() == "previous" and list(tmp_path.iterdir()) == [target]


# ----------------------------------------------------------------------------- random values into every numeric flag

SPECIAL = ["nan", "inf", "-inf", "-1", "0", "1e400", "", "abc", "1e-300", "-0", "3.5", "99999999999999999999"]


def values(*valid: str):
    """Mostly valid values (so that successful runs are checked too), often special ones."""
    return st.one_of(st.sampled_from(list(valid)), st.sampled_from(list(valid)), st.sampled_from(SPECIAL))


TRAIN_FLAGS = {
    "--epochs": values("1", "2"), "--batch-size": values("7", "64", "100000"), "--lr": values("0.01", "1e-5", "10"),
    "--weight-decay": values("0.01", "1e-4"), "--momentum": values("0.5", "0.99"), "--lars-eta": values("0.5"),
    "--base-batch-size": values("64", "1024"), "--warmup-epochs": values("0.5", "1"),
    "--clip-grad-norm": values("1", "0.1"), "--negatives": values("1", "3", "59"), "--patience": values("1", "3"),
    "--seed": values("3", "123456789"), "--eval-batch-size": values("1", "13"), "--checkpoint-every": values("1", "5"),
    "--ks": values("1,5", "10", "1000"),
}
PREPARE_FLAGS = {
    "--seed": values("1", "7"), "--test-negatives": values("1", "5", "59"), "--heldout-users": values("2", "5", "40"),
    "--holdout-fraction": values("0.5", "0.9"), "--ratios": values("0.6,0.2,0.2", "1,0,0", "0.5,0.5,0.5"),
    "--min-rating": values("1", "4"), "--min-user-interactions": values("1", "5", "100"),
}
SYNTH_FLAGS = {"--users": values("40", "80"), "--items": values("50", "60"), "--interactions": values("400", "450"),
               "--seed": values("1"), "--clusters": values("1", "5")}


def _flag_error_is_clean(code, err, command) -> bool:
    return code == 2 and _one_line_error(err, command) and "--" in err or "error: argument" in err


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(model=st.sampled_from(["gmf", "multdae", "ease", "embedding-mlp"]),
       chosen=st.dictionaries(st.sampled_from(sorted(TRAIN_FLAGS)), st.none(), min_size=1, max_size=3),
       data=st.data())
def test_random_values_in_train_flags_end_in_success_or_a_one_line_error(small, tmp_path_factory, capsys, model,
                                                                         chosen, data):
    out = tmp_path_factory.mktemp("flags") / "run"
    flags = [x for flag in chosen for x in (flag, data.draw(TRAIN_FLAGS[flag], label=flag))]
    started = time.monotonic()
    code, _, err = _run(["train", "--data", small, "--model", model, "--device", "cpu", "--out", out,
                         *(["--epochs", "1"] if "--epochs" not in chosen else []), *flags], capsys)
    assert time.monotonic() - started < 120
    event(f"exit {code}")
    if code == 0:
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r.get("loss", 0.0)) for r in records)
        assert any(np.isfinite(r["hr@10" if "hr@10" in r else next(k for k in r if k.startswith("hr@"))])
                   for r in records)
    else:
        assert code == 2 and ("error: argument" in err or _one_line_error(err, "train")), (flags, err)
        assert not out.exists()


@pytest.mark.slow
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(protocol=st.sampled_from(["ncf", "vae", "random"]),
       chosen=st.dictionaries(st.sampled_from(sorted(PREPARE_FLAGS)), st.none(), min_size=1, max_size=3),
       data=st.data())
def test_random_values_in_prepare_flags_end_in_success_or_a_one_line_error(tmp_path_factory, capsys, protocol,
                                                                           chosen, data):
    work = tmp_path_factory.mktemp("prep")
    rows = [f"{u},{i},{(u * i) % 5 + 1},{u * 100 + i}" for u in range(1, 41) for i in range(1, 61) if (u + i) % 4 == 0]
    ratings = write_ratings(work / "r.csv", rows)
    flags = [x for flag in chosen for x in (flag, data.draw(PREPARE_FLAGS[flag], label=flag))]
    defaults = ["--test-negatives", "10"] if "--test-negatives" not in chosen else []
    code, _, err = _run(["prepare", "--ratings", ratings, "--protocol", protocol, "--out", work / "p", *defaults,
                         *flags], capsys)
    event(f"exit {code}")
    if code == 0:
        PreparedDataset(work / "p")
        json.loads((work / "p" / "meta.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    else:
        assert code == 2 and ("error: argument" in err or _one_line_error(err, "prepare")), (flags, err)
        assert not (work / "p").exists()


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(SYNTH_FLAGS)), st.none(), min_size=1, max_size=3),
       k=values("1", "5", "100"), ks=values("1,5", "10,1000"), data=st.data())
def test_random_values_in_synth_evaluate_and_recommend_flags(small, tmp_path_factory, capsys, chosen, k, ks, data):
    work = tmp_path_factory.mktemp("synth")
    flags = [x for flag in chosen for x in (flag, data.draw(SYNTH_FLAGS[flag], label=flag))]
    base = {"--users": "80", "--items": "60", "--interactions": "400"}
    defaults = [x for flag, value in base.items() if flag not in chosen for x in (flag, value)]
    code, _, err = _run(["datasets", "synth", "--out", work / "raw", *defaults, *flags], capsys)
    event(f"synth exit {code}")
    assert code == 0 or (code == 2 and ("error: argument" in err or _one_line_error(err, "datasets"))), (flags, err)
    run = tmp_path_factory.mktemp("r") / "run"
    assert _run(_train_args(small, run), capsys)[0] == 0
    code, _, err = _run(["recommend", "--run", run, "--all", "--k", k, "--out", work / "recs.tsv"], capsys)
    assert code == 0 or (code == 2 and ("error: argument" in err or _one_line_error(err, "recommend"))), (k, err)
    code, out, err = _run(["evaluate", "--run", run, "--k", ks], capsys)
    assert code == 0 or (code == 2 and ("error: argument" in err or _one_line_error(err, "evaluate"))), (ks, err)
    if code == 0:
        result = json.loads((run / "eval-test.json").read_text())
        assert all(np.isfinite(v) for key, v in result.items() if key.startswith(("hr@", "ndcg@")))


def test_no_evaluation_negatives_is_refused_not_a_table_of_ones(tmp_path, capsys):
    code, _, err = _run(["prepare", "--dataset", "ml-latest-small", "--out", tmp_path / "d", "--test-negatives", "0"],
                        capsys)
    assert code == 2 and _one_line_error(err, "prepare") and "--protocol random or vae" in err
    assert not (tmp_path / "d").exists()


def test_cut_offs_stay_below_the_sampled_negatives(small, tmp_path, capsys):
    # small: ncf with 10 sampled negatives per test user, so 11 candidates
    code, _, err = _run([*_train_args(small, tmp_path / "r"), "--ks", "5,10"], capsys)
    assert code == 2 and _one_line_error(err, "train") and "--ks: 10 is not below the 10 sampled negatives" in err
    assert _run(_train_args(small, tmp_path / "run"), capsys)[0] == 0
    assert read_run_config(tmp_path / "run")[0].eval.ks == (5,)  # no default K at or above 10: half of them
    code, _, err = _run(["evaluate", "--run", tmp_path / "run", "--k", "5,20"], capsys)
    assert code == 2 and _one_line_error(err, "evaluate") and "--k: 20 is not below" in err
    code, out, _ = _run(["evaluate", "--run", tmp_path / "run"], capsys)
    assert code == 0 and "hr@5" in out and "hr@10" not in out

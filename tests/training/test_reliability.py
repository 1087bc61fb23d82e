"""Crash-safe checkpoints, exact resume, graceful stop, safe loading and hostile input."""

import json
import os
import signal

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.readers import read_ratings_csv
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.fsutil import sha256_file
from recscale.tensorfiles import load_checkpoint, save_checkpoint
from tests.helpers import kill_mid_epoch, synthetic_raw, train_process

TRAIN = ["--model", "neumf", "--epochs", "3", "--batch-size", "512", "--checkpoint-every", "5",
         "--device", "cpu", "--seed", "7"]




@pytest.fixture(scope="module")
def small_ncf(tmp_path_factory):
    out = tmp_path_factory.mktemp("ncf") / "data"
    prepare(synthetic_raw(n_users=200, n_items=300, per_user=30), PrepareConfig(protocol="ncf", test_negatives=20), out)
    return out


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(small_ncf, tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    proc = train_process(["--data", str(small_ncf), *TRAIN, "--out", str(full)])
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    code, _ = kill_mid_epoch(["--data", str(small_ncf), *TRAIN, "--out", str(broken)], broken, signal.SIGKILL)
    assert code == -signal.SIGKILL
    resumed = train_process(["--resume", str(broken)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()

    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    lines = [[json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] for run in (full, broken)]
    drop = ("train_seconds", "valid_seconds", "samples_per_second")
    assert [{k: v for k, v in r.items() if k not in drop} for r in lines[0]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in lines[1]]
    assert len(lines[0]) == 3


@pytest.mark.slow
def test_sigterm_stops_gracefully_with_a_resume_hint(small_ncf, tmp_path):
    run = tmp_path / "run"
    code, err = kill_mid_epoch(["--data", str(small_ncf), *TRAIN, "--out", str(run)], run, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]  # earlier lines are the per-epoch log
    assert last.startswith("recscale train: error: stopped by signal 15")
    assert last.endswith(f"resume with: recscale train --resume {run}")
    assert load_checkpoint(run / "checkpoints" / "last.pt")["train_state"]["position"] > 0


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['RECSCALE_PWNED']}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("RECSCALE_PWNED", str(marker))
    path = tmp_path / "last.pt"
    torch.save({"model": _Exploit()}, path, pickle_protocol=2)
    (tmp_path / "last.pt.sha256").write_text(f"{sha256_file(path)}  last.pt\n")  # a valid checksum
    with pytest.raises(RecscaleError, match="refused to load"):
        load_checkpoint(path)
    assert not marker.exists()


def test_truncated_or_unverified_checkpoints_are_reported(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}})
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1000))
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(RecscaleError, match="checksum mismatch"):
        load_checkpoint(path)
    (tmp_path / "last.pt.sha256").unlink()
    with pytest.raises(RecscaleError, match="checksum file missing"):
        load_checkpoint(path)


HEADER = "userId,movieId,rating,timestamp\n"
cells = st.one_of(st.integers(-5, 10**25).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                  st.text(max_size=6), st.just(""))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(
    st.binary(max_size=300),
    st.lists(st.lists(cells, min_size=0, max_size=6).map(",".join), max_size=8)
      .map(lambda rows: (HEADER + "\r\n".join(rows)).encode()),
))
def test_hostile_ratings_files_give_a_result_or_a_one_line_error(tmp_path, body):
    path = tmp_path / "ratings.csv"
    path.write_bytes(body)
    try:
        frame = read_ratings_csv(path)
    except RecscaleError as exc:
        assert "\n" not in str(exc) and str(path) in str(exc)
        return
    assert frame.columns == ["user", "item", "rating", "timestamp"] and frame.height > 0
    assert frame["rating"].is_finite().all()


def test_unwritable_output_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecscaleError, match="not a directory|cannot create directory"):
        prepare(synthetic_raw(), PrepareConfig(protocol="random"), tmp_path / "file" / "out")

    import errno

    import polars as pl

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    with pytest.raises(RecscaleError, match="out: cannot write: No space left on device"):
        prepare(synthetic_raw(), PrepareConfig(protocol="random"), tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]

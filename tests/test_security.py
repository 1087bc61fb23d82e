"""Trust (issue 27): a bundle is data and is verified whole, --overwrite replaces only what recscale
made and never an input, locks hold whatever path reaches a directory, a tune study is resumed
only with what it searched, the streaming engine refuses what the in-memory one refuses and
leaves nothing behind when stopped. The server's limits are in test_server_limits.py; full disks
in test_bad_input.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import recscale
from recscale.cli import main
from recscale.config.prepare import PrepareConfig
from recscale.data.prepare.memory import prepare
from recscale.errors import RecscaleError
from recscale.export import export_run
from recscale.fsutil import sha256_file
from recscale.serving.bundle import Bundle
from recscale.serving.format import MANIFEST, file_entries
from tests.helpers import synthetic_raw, write_ratings

pytest.importorskip("onnxruntime")


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith(("note:", "epoch "))]
    assert code == 0 or len(lines) == 1, err  # every refusal is one line
    return code, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(prepared ncf data, a gmf run, its bundle with ONNX and torch.export graphs)."""
    root = tmp_path_factory.mktemp("trust")
    prepare(synthetic_raw(n_users=40, n_items=30, per_user=10), PrepareConfig(protocol="ncf", test_negatives=5),
            root / "data")
    run = recscale.train(root / "data", "gmf", root / "run", epochs=1, batch_size=256, device="cpu", progress=False)
    export_run(run.path, root / "bundle")
    return root / "data", run.path, root / "bundle"


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "copy"))


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def _rewrite(bundle: Path, change=lambda m: None, rehash: bool = True) -> None:
    """Edit the manifest as an attacker who also controls it would (hashes made to match)."""
    manifest = _manifest(bundle)
    change(manifest)
    if rehash:
        manifest["files"] = file_entries(bundle)
    (bundle / MANIFEST).write_text(json.dumps(manifest))


# ----------------------------------------------------------------------------- 1. a bundle is data

def test_the_manifest_lists_every_file_with_its_size_and_sha256(trained):
    _, _, bundle = trained
    listed = _manifest(bundle)["files"]
    assert set(listed) == {p.name for p in bundle.iterdir()} - {MANIFEST}
    for name, entry in listed.items():
        assert entry == {"bytes": (bundle / name).stat().st_size, "sha256": sha256_file(bundle / name)}


def test_a_torch_export_program_is_never_loaded_unless_trusted(trained, tmp_path, monkeypatch, capsys):
    import torch
    _, _, bundle = trained
    loads = []
    real_load = torch.export.load
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    assert Bundle(bundle).scores.runtime == "onnx" and Bundle(bundle, runtime="onnx").scores.runtime == "onnx"
    with pytest.raises(RecscaleError, match="unpickles it, which can run code.*--trust-bundle"):
        Bundle(bundle, runtime="torch")
    assert loads == []  # the unpickling loader was never reached
    # a bundle with only the program: refused too, unless the user says they trust it
    only_pt2 = _copy(bundle, tmp_path)
    for name in ("model.onnx", "users.onnx"):
        (only_pt2 / name).unlink()
    (only_pt2 / "model.onnx.data").unlink(missing_ok=True)
    _rewrite(only_pt2, lambda m: [g.update(files=[f for f in g["files"] if f.endswith(".pt2")])
                                  for g in m["graphs"].values()])
    with pytest.raises(RecscaleError, match="--trust-bundle"):
        Bundle(only_pt2)
    assert loads == []
    assert Bundle(only_pt2, trust=True).scores.runtime == "torch" and loads
    code, err = _cli(["serve", "--bundle", bundle, "--runtime", "torch", "--port", "0"], capsys)
    assert code == 2 and "--trust-bundle" in err


@pytest.mark.parametrize("damage, fragment", [
    ("truncate", "bytes, the manifest says"),
    ("alter", "SHA-256 differs from the manifest's"),
    ("remove", "missing (listed in manifest.json)"),
    ("extra", "not listed in manifest.json"),
    ("symlink", "not a plain file"),
])
def test_a_damaged_bundle_is_refused_naming_the_file(trained, tmp_path, damage, fragment, capsys):
    _, _, bundle = trained
    copy = _copy(bundle, tmp_path)
    target = copy / "popularity.npy"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "alter":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "remove":
        target.unlink()
    elif damage == "extra":
        target = copy / "other.onnx"
        shutil.copyfile(copy / "model.onnx", target)
    else:
        outside = tmp_path / "elsewhere.npy"
        shutil.move(target, outside)
        target.symlink_to(outside)
    with pytest.raises(RecscaleError, match=re.escape(fragment)) as caught:
        Bundle(copy)
    assert target.name in str(caught.value) and "\n" not in str(caught.value)
    code, err = _cli(["serve", "--bundle", copy, "--port", "0"], capsys)
    assert code == 2 and target.name in err and fragment in err


@pytest.mark.parametrize("change, fragment", [
    (lambda m: m.update(bundle_version=1), "bundle version 1, this recscale reads version 2"),
    (lambda m: m.update(kind="tower"), "kind: Input should be 'rows' or 'pairs'"),
    (lambda m: m.pop("n_items"), "n_items: Field required"),
    (lambda m: m.update(n_users="40"), "n_users: Input should be a valid integer"),
    (lambda m: m["graphs"].update(extra={}), "graphs.extra: Extra inputs are not permitted"),
    (lambda m: m["files"].update({"../x": {"bytes": 1, "sha256": "0" * 64}}), "is not a file name in the bundle"),
    (lambda m: m.update(kind="rows"), "its onnx graph fails on the manifest's inputs"),
])
def test_a_manifest_that_does_not_match_is_one_line(trained, tmp_path, change, fragment):
    _, _, bundle = trained
    copy = _copy(bundle, tmp_path)
    _rewrite(copy, change, rehash=False)
    with pytest.raises(RecscaleError, match="manifest|bundle version|graph fails") as caught:
        Bundle(copy)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)
    (copy / MANIFEST).write_text("[1, 2")
    with pytest.raises(RecscaleError, match="manifest.json: unreadable"):
        Bundle(copy)


@pytest.mark.parametrize("file, replace, fragment", [
    ("popularity.npy", lambda p: np.save(p, np.ones(29, dtype=np.float32)), "shape (29,)"),
    ("popularity.npy", lambda p: p.write_bytes(b"not numpy"), "not a NumPy array"),
    ("users.parquet", lambda p: pl.DataFrame({"user": [0], "original_id": [1]}).write_parquet(p), "1 rows, the manifest says 40"),
    ("seen.npz", lambda p: np.savez(p, indptr=np.zeros(41, dtype=np.int64), indices=np.zeros(0, dtype=np.int32),
                                    shape=np.array([40, 31])), "shape (40, 31), the manifest says (40, 30)"),
    ("history.npz", lambda p: np.savez(p, indptr=np.arange(41, dtype=np.int64), indices=np.full(40, 99, dtype=np.int32),
                                       shape=np.array([40, 30])), "malformed CSR"),
    ("item_vectors.npy", lambda p: np.save(p, np.ones((30, 3), dtype=np.float32)), "item vectors of shape (30, 3)"),
])
def test_shapes_that_disagree_with_the_manifest_are_refused_before_serving(trained, tmp_path, file, replace, fragment):
    _, _, bundle = trained
    copy = _copy(bundle, tmp_path)
    replace(copy / file)
    _rewrite(copy)  # the hashes match: only the shapes are wrong
    with pytest.raises(RecscaleError, match=file.replace(".", r"\.")) as caught:
        Bundle(copy)
    assert fragment in str(caught.value), caught.value


def test_an_onnx_graph_may_not_read_files_the_manifest_does_not_list(trained, tmp_path):
    import onnx
    from onnx import external_data_helper
    _, _, bundle = trained
    copy = _copy(bundle, tmp_path)
    model = onnx.load(str(copy / "model.onnx"))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 4096)
    for tensor in model.graph.initializer[:1]:
        external_data_helper.set_external_data(tensor, location="../secret.bin")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        tensor.ClearField("raw_data")
    onnx.save(model, str(copy / "model.onnx"))
    _rewrite(copy)
    with pytest.raises(RecscaleError, match=r"model.onnx: names external data '\.\./secret\.bin'"):
        Bundle(copy)


# ----------------------------------------------------------------------------- 2. --overwrite

def _ratings(tmp_path: Path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    frame = synthetic_raw(n_users=30, n_items=25, per_user=8).interactions
    return write_ratings(raw / "ratings.csv", [",".join(map(str, row)) for row in
                                               frame.select("user", "item", "rating", "timestamp").iter_rows()])


PREPARE = ["prepare", "--protocol", "ncf", "--test-negatives", "3"]


def test_prepare_overwrite_replaces_only_its_own_kind_of_output_and_never_an_input(tmp_path, capsys):
    ratings = _ratings(tmp_path)
    prepare_args = [*PREPARE, "--ratings", ratings, "--overwrite", "--out"]
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    (tmp_path / "link").symlink_to(ratings.parent)
    cases = [
        (mine, "is a directory that is not a prepared dataset recscale wrote"),
        (ratings.parent, "contains the input"),          # the raw file's directory
        (tmp_path, "contains the input"),                # an ancestor of the input
        (ratings, "is the input"),
        (tmp_path / "link", "contains the input"),       # the same directory through a symlink
        (tmp_path / "x" / ".." / "raw", "contains the input"),
    ]
    for out, fragment in cases:
        code, err = _cli([*prepare_args, out], capsys)
        assert code == 2 and fragment in err, (out, err)
    assert (mine / "thesis.txt").read_text() == "years of work" and ratings.is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _cli([*prepare_args, empty], capsys)[0] == 0
    assert _cli([*prepare_args, empty], capsys)[0] == 0  # its own output: replaced
    run = recscale.train(empty, "popularity", tmp_path / "run", device="cpu", progress=False)
    code, err = _cli([*prepare_args, run.path], capsys)
    assert code == 2 and "not a prepared dataset" in err and (run.path / "config.toml").is_file()


def test_train_export_recommend_and_tune_never_replace_an_input_or_a_stranger(trained, tmp_path, capsys):
    data, run, bundle = trained
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "keep.txt").write_text("mine")
    train = ["train", "--data", data, "--model", "gmf", "--epochs", "1", "--device", "cpu", "--overwrite", "--out"]
    assert "contains the input" in _cli([*train, data.parent], capsys)[1]
    assert "not a run directory" in _cli([*train, stranger], capsys)[1]
    export = ["export", "--run", run, "--overwrite", "--out"]
    assert "is the input" in _cli([*export, run], capsys)[1]
    assert "contains the input" in _cli([*export, run.parent], capsys)[1]
    assert "is the input" in _cli([*export, data], capsys)[1]  # the run's prepared data is read too
    assert "not a bundle recscale wrote" in _cli([*export, stranger], capsys)[1]
    known = [str(u) for u in Bundle(bundle).user_ids[:2].tolist()]
    users = tmp_path / "users.txt"
    users.write_text("\n".join(known) + "\n")
    recommend = ["recommend", "--run", run, "--k", "2", "--users", users, "--out"]
    assert _cli([*recommend, tmp_path / "recs.tsv"], capsys)[0] == 0
    assert "already exists (pass --overwrite" in _cli([*recommend, tmp_path / "recs.tsv"], capsys)[1]
    assert _cli([*recommend, tmp_path / "recs.tsv", "--overwrite"], capsys)[0] == 0  # its own file
    (tmp_path / "notes.tsv").write_text("my\tnotes\n")
    assert "not a recommendations file recscale wrote" in _cli([*recommend, tmp_path / "notes.tsv", "--overwrite"],
                                                               capsys)[1]
    assert (tmp_path / "notes.tsv").read_text() == "my\tnotes\n"
    users_tsv = tmp_path / "users.tsv"
    users_tsv.write_text(known[0] + "\n")
    code, err = _cli(["recommend", "--run", run, "--users", users_tsv, "--overwrite", "--out", users_tsv], capsys)
    assert code == 2 and "is the input" in err and users_tsv.read_text() == known[0] + "\n"
    tune = ["tune", "--data", data, "--model", "gmf", "--epochs", "1", "--trials", "1", "--device", "cpu", "--out"]
    assert "is a directory that is not a tune study" in _cli([*tune, stranger], capsys)[1]
    assert "contains the input" in _cli([*tune, data.parent], capsys)[1]
    assert (stranger / "keep.txt").read_text() == "mine" and (run / "config.toml").is_file()
    assert (data / "meta.json").is_file() and Bundle(bundle).n_items == 30


# ----------------------------------------------------------------------------- 4. locks and studies

def test_the_run_lock_holds_through_symlinks_and_relative_paths(tmp_path, monkeypatch):
    from recscale.training.rundir import RunDirectory
    (tmp_path / "runs").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "runs")
    first, _ = RunDirectory.create(tmp_path / "runs" / "r", overwrite=False)
    try:
        monkeypatch.chdir(tmp_path / "runs")
        for other in (tmp_path / "alias" / "r", Path("r"), Path("../alias/./r")):
            with pytest.raises(RecscaleError, match="in use by recscale"):
                RunDirectory.create(other, overwrite=False)
    finally:
        first.abandon()
        first.close()


def test_a_study_is_resumed_only_with_what_it_searched(trained, tmp_path):
    from recscale.config.layers import Layer
    from recscale.training.build import resolve_run_config
    from recscale.tuning.space import parse_space
    from recscale.tuning.study import TuneJob, _claim_study, _existing, fingerprint, open_study
    data, _, _ = trained
    fields = {"factors"}
    space = parse_space("test", {"factors": {"type": "int", "low": 4, "high": 8}}, fields)
    wider = parse_space("test", {"factors": {"type": "int", "low": 4, "high": 16}}, fields)
    cfg = resolve_run_config({"data": str(data), "model": "gmf", "epochs": 1, "device": "cpu", "progress": False})

    def job(space_, study="recscale", overwrite=False, model="gmf"):
        return TuneJob(tmp_path / "study", [Layer(cfg.flat(), "test")], Layer({}, "test"), space_, model, 1, None, 0,
                       1, study, fingerprint(model, data, "ncf", space_), overwrite)

    (tmp_path / "study").mkdir()
    _claim_study(job(space))
    open_study(job(space)).enqueue_trial({"factors": 5})
    _claim_study(job(space))  # the same search: resumes
    for other, differs in ((job(wider), "space"), (job(space, model="mlp"), "model")):
        with pytest.raises(RecscaleError, match=f"made for another {differs}; pick a new --study NAME, or --overwrite"):
            _claim_study(other)
    _claim_study(job(wider, study="wide"))  # another name beside it
    trial = tmp_path / "study" / "trials" / "0000"
    trial.mkdir(parents=True)
    (tmp_path / "study" / "trials.tsv").write_text("old")
    _claim_study(job(wider, overwrite=True))  # afresh: that study's trials and outputs go, nothing else
    assert not trial.exists() and not (tmp_path / "study" / "trials.tsv").exists()
    assert _existing(job(wider, study="wide")) is not None
    assert len(_existing(job(wider)).get_trials()) == 0


# ----------------------------------------------------------------------------- 5. both engines, same refusals

@pytest.mark.parametrize("column, values, fragment", [
    ("movieId", lambda n: [[i] for i in range(n)], "column movieId holds List(Int64), expected integer or text ids"),
    ("movieId", lambda n: [{"a": i} for i in range(n)], "column movieId holds Struct"),
    ("movieId", lambda n: [bytes([i % 200]) for i in range(n)], "column movieId holds Binary"),
    ("rating", lambda n: [[1.0]] * n, "column rating holds List(Float64), expected numbers"),
    ("timestamp", lambda n: [str(i) for i in range(n)], "column timestamp holds String, expected numbers"),
    ("userId", lambda n: [i % 30 + 0.5 for i in range(n)], "row 1: userId is not an integer id: 0.5"),
    ("rating", lambda n: [float("nan")] + [4.0] * (n - 1), "row 1: rating is not a finite number: nan"),
    ("userId", lambda n: [None] + list(range(1, n)), "row 1: missing value for userId"),
])
def test_both_engines_refuse_the_same_column_types_in_one_line(tmp_path, capsys, column, values, fragment):
    n = 300
    table = {"userId": [i % 30 for i in range(n)], "movieId": [i % 47 for i in range(n)], "rating": [4.0] * n,
             "timestamp": list(range(n))}
    path = tmp_path / "ratings.parquet"
    pl.DataFrame({**table, column: values(n)}).write_parquet(path)
    for engine in ("memory", "stream"):
        code, err = _cli([*PREPARE, "--ratings", path, "--engine", engine, "--out", tmp_path / engine], capsys)
        assert code == 2 and fragment in err and "Panic" not in err, (engine, err)
        assert not (tmp_path / engine).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ratings.parquet"]  # no scratch either


def test_scratch_of_a_dead_process_is_removed_by_the_next_run_and_a_live_ones_kept(tmp_path):
    from recscale.fsutil import remove_stale_scratch
    out = tmp_path / "data"
    dead = tmp_path / ".data.scratch-999999999-abc"
    dead.mkdir()
    (dead / "part.parquet").write_bytes(b"x")
    (tmp_path / ".data.tmp-999999999-def").write_bytes(b"x")
    live = tmp_path / f".data.scratch-{os.getpid()}-ghi"
    live.mkdir()
    other = tmp_path / ".other.scratch-999999999-x"
    other.mkdir()
    assert sorted(p.name for p in remove_stale_scratch(out)) == [".data.scratch-999999999-abc",
                                                                 ".data.tmp-999999999-def"]
    assert live.is_dir() and other.is_dir() and not dead.exists()


# ----------------------------------------------------------------------------- 5. streamed prepare and signals

@pytest.fixture(scope="module")
def large_csv(tmp_path_factory):
    """A log that takes the streaming engine several seconds on 2 cores."""
    rng = np.random.default_rng(0)
    n = 2_000_000
    path = tmp_path_factory.mktemp("large") / "ratings.csv"
    pl.DataFrame({"userId": rng.integers(0, 40_000, n), "movieId": rng.integers(0, 5_000, n),
                  "rating": np.full(n, 4.0), "timestamp": np.arange(n)}).write_csv(path)
    return path


def _start_stream_prepare(csv: Path, out: Path):
    import subprocess
    import sys
    process = subprocess.Popen([sys.executable, "-m", "recscale", *PREPARE, "--ratings", str(csv), "--engine", "stream",
                                "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not list(out.parent.glob(f".{out.name}.scratch-*")):  # it is working on the scratch
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)
    return process


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_signal_ends_streamed_prepare_quickly_and_leaves_nothing(large_csv, tmp_path, signum, code):
    out = tmp_path / "data"
    process = _start_stream_prepare(large_csv, out)
    time.sleep(0.3)
    sent = time.monotonic()
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == code, err
    assert time.monotonic() - sent < 5 and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # no scratch, no partial output


@pytest.mark.slow
def test_the_scratch_of_a_killed_streamed_prepare_is_removed_by_the_next_run(large_csv, tmp_path):
    out = tmp_path / "data"
    process = _start_stream_prepare(large_csv, out)
    process.kill()
    process.wait(30)
    left = list(tmp_path.glob(".data.scratch-*"))
    assert left and not out.exists()
    prepare(synthetic_raw(n_users=30, n_items=25, per_user=8), PrepareConfig(protocol="ncf", test_negatives=3), out)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]

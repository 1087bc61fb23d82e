"""Data larger than memory: the streaming `prepare` writes what the in-memory one writes, streaming
training gives the in-memory batches when one window holds the split, and the windowed loaders
keep their promises (exact negatives, equal batch counts, exact resume, bounded memory)."""

import json
import signal
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
import torch

from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.csr import CSRFile
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions
from recscale.data.ingest.scan import ratings_source
from recscale.data.loading.factory import LoaderOptions, pair_loader, row_loader, tabular_loader
from recscale.data.loading.stream import StreamPairLoader, StreamRowLoader, StreamTabularLoader
from recscale.data.prepare.memory import prepare
from recscale.data.prepare.stream import prepare_stream
from recscale.errors import RecscaleError
from tests.helpers import kill_mid_epoch, train_process


def _log(path, n_users=60, n_items=40, seed=0, text_ids=False, ties=True):
    """A CSV log with repeated (user, item) pairs, equal timestamps and rows out of order."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in rng.permutation(n_users):
        k = int(rng.integers(3, 25))
        items = rng.integers(0, n_items, k)
        stamps = rng.integers(0, 6 if ties else 10**6, k)
        for i, t in zip(items, stamps):
            user = f"u{u:03d}" if text_ids else str(u + 7)
            item = f"it{i}" if text_ids else str(i * 3 + 1)
            rows.append(f"{user},{item},{rng.integers(1, 11) / 2},{t}")
    path.write_text("userId,movieId,rating,timestamp\n" + "\n".join(rows) + "\n")
    return path


def _same_dataset(a, b):
    meta_a, meta_b = (json.loads((p / "meta.json").read_text()) for p in (a, b))
    # Parquet bytes differ between writers (Polars in memory, pyarrow by row group): the content is compared
    assert {k: v for k, v in meta_a.items() if k != "sha256"} == {k: v for k, v in meta_b.items() if k != "sha256"}
    for name in meta_a["files"].values():
        assert pl.read_parquet(a / name).equals(pl.read_parquet(b / name)), name
    for part, files in meta_a["index"].items():
        for name in files.values():
            assert np.array_equal(np.load(a / name), np.load(b / name)), name


@pytest.mark.parametrize("protocol, options", [
    ("ncf", {}), ("ncf", {"tie_break": "random"}), ("ncf", {"tie_break": "item", "valid": False}),
    ("ncf", {"min_user_interactions": 5, "min_rating": 2.0}), ("vae", {"heldout_users": 8}),
    ("random", {}), ("random", {"ratios": (0.6, 0.2, 0.2), "seed": 3}),
    ("temporal", {}), ("temporal", {"cutoff": "4", "valid_cutoff": "0.3", "tie_break": "random"}),
    ("temporal", {"valid": False, "cutoff": "0.6", "min_user_interactions": 4})])
@pytest.mark.parametrize("text_ids", [False, True])
def test_streaming_prepare_writes_what_the_in_memory_prepare_writes(tmp_path, protocol, options, text_ids):
    path = _log(tmp_path / "log.csv", text_ids=text_ids)
    cfg = PrepareConfig(protocol=protocol, test_negatives=10, **options)
    prepare(RawDataset("log", read_interactions(path), None, (path,)), cfg, tmp_path / "memory")
    # buckets of about 50 rows: every protocol's global draws must line up across many buckets
    prepare_stream(ratings_source(path), cfg, tmp_path / "stream", rows_per_bucket=50)
    _same_dataset(tmp_path / "memory", tmp_path / "stream")


def test_streaming_prepare_reads_parquet_and_reports_bad_lines(tmp_path):
    path = _log(tmp_path / "log.csv")
    frame = pl.read_csv(path)
    frame.write_parquet(tmp_path / "log.parquet")
    cfg = PrepareConfig(protocol="ncf", test_negatives=5)
    parquet = tmp_path / "log.parquet"
    prepare(RawDataset("log", read_interactions(parquet), None, (parquet,)), cfg, tmp_path / "memory")
    prepare_stream(ratings_source(tmp_path / "log.parquet"), cfg, tmp_path / "stream")
    _same_dataset(tmp_path / "memory", tmp_path / "stream")

    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace("\n", "\n1,2,oops,3\n", 4).replace("\n1,2,oops,3\n", "\n", 3))
    with pytest.raises(RecscaleError, match=r"bad\.csv:\d+:.*rating"):
        prepare_stream(ratings_source(bad), cfg, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob(".bad*"))  # no scratch left behind


def test_cli_engine_flag_and_auto_choice(tmp_path):
    path = _log(tmp_path / "log.csv", n_users=30)
    run = [sys.executable, "-m", "recscale", "prepare", "--ratings", str(path), "--test-negatives", "5"]
    forced = subprocess.run([*run, "--out", str(tmp_path / "s"), "--engine", "stream"], capture_output=True, text=True)
    assert forced.returncode == 0 and "engine: stream" in forced.stderr
    # auto: the in-memory estimate of this file is over a 1 KB budget, so it streams
    auto = subprocess.run([*run, "--out", str(tmp_path / "a"), "--memory-budget", "1KB"], capture_output=True, text=True)
    assert auto.returncode == 0 and "engine: stream" in auto.stderr
    plain = subprocess.run([*run, "--out", str(tmp_path / "m")], capture_output=True, text=True)
    assert plain.returncode == 0 and "engine: stream" not in plain.stderr
    _same_dataset(tmp_path / "m", tmp_path / "s")
    bad = subprocess.run([*run, "--out", str(tmp_path / "x"), "--memory-budget", "lots"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--memory-budget" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


# ----------------------------------------------------------------------------- loaders


def _batches(loader, epoch=0, start=0):
    loader.set_epoch(epoch, start)
    return list(loader)


def _equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for field in ("users", "items", "labels", "rows", "indices", "offsets", "values", "genre_values",
                      "genre_offsets"):
            if getattr(x, field, None) is not None:
                assert torch.equal(getattr(x, field), getattr(y, field)), field


@pytest.fixture(scope="module")
def ncf_stream(prepared):
    data = prepared("ncf")
    return data, PreparedDataset(data.root, streaming=True)


@pytest.mark.parametrize("world", [1, 3])
def test_one_window_gives_the_in_memory_batches(ncf_stream, prepared, world):
    memory, stream = ncf_stream
    for rank in range(world):
        base = LoaderOptions(batch_size=1000, seed=5, rank=rank, world_size=world)
        wide = LoaderOptions(batch_size=1000, seed=5, rank=rank, world_size=world, window=10**9)
        _equal(_batches(pair_loader(memory, base), 2), _batches(pair_loader(stream, wide), 2))
        labels = lambda r: r > 3.5  # noqa: E731
        _equal(_batches(tabular_loader(memory, base, labels), 1), _batches(tabular_loader(stream, wide, labels), 1))
    vae = prepared("vae")
    vae_stream = PreparedDataset(vae.root, streaming=True)
    for sparse in (False, True):
        options = LoaderOptions(batch_size=100, seed=3, window=1)
        _equal(_batches(row_loader(vae, LoaderOptions(batch_size=100, seed=3), sparse=sparse)),
               _batches(row_loader(vae_stream, options, sparse=sparse)))


def test_windows_read_from_disk_or_memory_give_the_same_batches(ncf_stream):
    memory, stream = ncf_stream
    a = StreamPairLoader(memory.csr("train"), 512, window=3000, seed=1)
    b = StreamPairLoader(stream.csr("train"), 512, window=3000, seed=1)
    assert a.plan.block > 1 and a.plan.n_windows > 10
    _equal(_batches(a, 1), _batches(b, 1))


def test_windowed_negatives_are_never_positives_and_cover_each_positive_once(ncf_stream):
    memory, _ = ncf_stream
    csr = memory.csr("train")
    loader = StreamPairLoader(csr, 700, window=2500, negatives=3, seed=2)
    batches = _batches(loader, 4)
    users = torch.cat([b.users for b in batches]).numpy()
    items = torch.cat([b.items for b in batches]).numpy()
    labels = torch.cat([b.labels for b in batches]).numpy()
    keys = set(zip(*memory.columns("train", "user", "item")))
    keys = {(int(u), int(i)) for u, i in keys}
    negatives = [(u, i) for u, i, y in zip(users, items, labels) if y == 0]
    assert len(negatives) == 3 * csr.nnz
    assert not any((int(u), int(i)) in keys for u, i in negatives)
    positives = sorted((int(u), int(i)) for u, i, y in zip(users, items, labels) if y == 1)
    assert positives == sorted(keys)  # every positive exactly once in an epoch of one rank


@pytest.mark.parametrize("pick", ["few far apart", "most of them"])
def test_rows_read_from_disk_equal_rows_in_memory(ncf_stream, pick):
    """Users in any order, repeated, a few far apart or most of them, and no users at all."""
    data, stream = ncf_stream
    disk, memory = stream.csr("train"), CSRFile(stream.root, "train", stream.n_items, memory=True)
    assert not disk.memory
    rng = np.random.default_rng(0)
    n = disk.n_users
    users = rng.choice(n, 5, replace=False) if pick == "few far apart" else rng.permutation(n)[: n * 3 // 4]
    users = np.concatenate([users, users[:2], [users[0] + 1 if users[0] + 1 < n else 0]])
    for got, want in zip(disk.rows(users), memory.rows(users)):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    empty = disk.rows(np.zeros(0, dtype=np.int64))
    assert empty[0].tolist() == [0] and empty[1].size == 0 and empty[2].size == 0


@pytest.mark.parametrize("world", range(1, 9))
def test_every_rank_gets_the_same_number_of_batches(ncf_stream, world):
    _, stream = ncf_stream
    csr = stream.csr("train")
    counts, positives = [], []
    for rank in range(world):
        loader = StreamPairLoader(csr, 997, window=1500, negatives=2, seed=0, rank=rank, world_size=world)
        batches = _batches(loader, 3)
        assert len(batches) == len(loader)
        counts.append(len(batches))
        positives.append(sum(int(b.labels.sum()) for b in batches))
        rows = StreamRowLoader(csr, torch.arange(csr.n_users), 64, rank=rank, world_size=world)
        assert len(_batches(rows)) == len(rows)
    assert len(set(counts)) == 1 and len(set(positives)) == 1
    assert sum(positives) - csr.nnz < world  # padding repeats at most world - 1 positives


def test_a_window_loader_resumed_mid_epoch_yields_the_rest_of_the_epoch(ncf_stream):
    _, stream = ncf_stream
    loader = StreamPairLoader(stream.csr("train"), 333, window=2000, seed=9)
    genres = (torch.zeros(0, dtype=torch.int64), torch.zeros(stream.n_items, dtype=torch.int64))
    tab = StreamTabularLoader(stream.csr("train"), lambda r: r > 3, *genres, 333, window=2000, seed=9)
    for each in (loader, tab):
        full = _batches(each, 2)
        for start in (1, 7, len(full) - 1):
            _equal(full[start:], _batches(each, 2, start))


def test_a_user_with_every_item_is_left_out_in_both_modes(tmp_path):
    from recscale.data.prepare.presplit import import_split
    frame = lambda rows: pl.DataFrame(rows, schema=["user", "item", "rating", "timestamp"], orient="row")  # noqa: E731
    train = frame([(1, i, 5.0, i) for i in range(1, 6)] + [(2, 1, 4.0, 1), (2, 2, 4.0, 2), (3, 3, 4.0, 1)])
    test = frame([(2, 4, 4.0, 9), (3, 5, 4.0, 9)])
    import_split("a", {"train": train, "test": test}, "ncf", tmp_path / "d", (), test_negatives=0)
    memory, stream = PreparedDataset(tmp_path / "d"), PreparedDataset(tmp_path / "d", streaming=True)
    a = pair_loader(memory, LoaderOptions(batch_size=4, negatives=1))
    b = pair_loader(stream, LoaderOptions(batch_size=4, negatives=1, window=10**6))
    assert a.dropped_users == b.dropped_users == 1
    _equal(_batches(a), _batches(b))
    c = pair_loader(stream, LoaderOptions(batch_size=4, negatives=1, window=2))
    assert c.plan.n_windows > 1 and all(int(u) != 0 for batch in _batches(c) for u in batch.users)


@pytest.mark.slow
def test_streamed_evaluation_and_recommend_equal_the_in_memory_ones(prepared, tmp_path):
    from recscale import api
    for protocol, model in (("ncf", "neumf"), ("vae", "multvae")):
        data = prepared(protocol)
        runs = {}
        for mode in ("memory", "stream"):
            runs[mode] = api.train(data.root, model=model, out=tmp_path / f"{protocol}-{mode}", epochs=1,
                                   data_loading=mode, progress=False)
        memory, stream = runs["memory"], runs["stream"]
        assert stream.config.loader.data_loading == "stream" and stream.data.streaming
        scores = [{k: v for k, v in run.evaluate("test").items() if k != "run"} for run in (memory, stream)]
        assert scores[0] == scores[1]
        some = data.original_user_ids()[::13]  # NeuMF scores every item of every user: a sample is enough
        assert memory.recommend(some, k=5).equals(stream.recommend(some, k=5))


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_in_streaming_mode(tmp_path):
    cfg = PrepareConfig(protocol="ncf", test_negatives=20)
    prepare_stream(ratings_source(_log(tmp_path / "log.csv", n_users=400, n_items=300, ties=False)), cfg,
                   tmp_path / "data")
    train = ["--data", str(tmp_path / "data"), "--model", "neumf", "--epochs", "3", "--batch-size", "256",
             "--checkpoint-every", "3", "--seed", "7", "--data-loading", "stream", "--memory-budget", "200KB"]
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert train_process([*train, "--out", str(full)]).wait(timeout=300) == 0
    code, _ = kill_mid_epoch([*train, "--out", str(broken)], broken, signal.SIGKILL)
    assert code == -signal.SIGKILL
    resumed = train_process(["--resume", str(broken)])
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    a = torch.load(full / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(broken / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


PEAK_SCRIPT = """
import sys

def hwm():  # VmHWM is this process's own peak; ru_maxrss would carry the forking parent's across exec
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
from recscale.data.dataset.prepared import PreparedDataset
from recscale.data.loading.factory import LoaderOptions, pair_loader
from recscale.data.loading.stream import window_positives
stream = sys.argv[2] == "stream"
data = PreparedDataset(sys.argv[1], streaming=stream)
before = hwm()
window = window_positives(int(sys.argv[3]), 4) if stream else None
loader = pair_loader(data, LoaderOptions(batch_size=4096, negatives=4, window=window))
n = sum(b.users.numel() for b in loader)
print(n, (hwm() - before) * 1024)
"""


@pytest.mark.slow
def test_streaming_training_stays_within_its_budget_where_the_in_memory_loader_does_not(tmp_path):
    from recscale.data.ingest.synth import SynthSpec, synthesize
    raw = synthesize(SynthSpec(users=20_000, items=5_000, interactions=2_000_000, seed=1)).raw
    path = tmp_path / "log.parquet"
    raw.interactions.write_parquet(path)
    prepare_stream(ratings_source(path, user_col="user", item_col="item"), PrepareConfig(test_negatives=10),
                   tmp_path / "data")
    budget = 64 * 2**20
    peaks = {}
    for mode in ("memory", "stream"):
        proc = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(tmp_path / "data"), mode, str(budget)],
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        examples, peaks[mode] = map(int, proc.stdout.split())
        assert examples >= 5 * 1_900_000
    # the in-memory epoch (about 2M x 5 examples) needs several times the budget; the windows do not
    assert peaks["memory"] > 4 * budget
    assert peaks["stream"] < 2 * budget, peaks

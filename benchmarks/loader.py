"""Loader throughput: recscale's batch loaders against the naive baseline NVTabular compares with,
a map-style torch Dataset + DataLoader(batch_size=B) collating single examples.

    python benchmarks/loader.py                 # 20M rows, B = 65,536 and 1,048,576 (a few minutes)
    python benchmarks/loader.py --rows 200000 --no-write   # smoke run

Data: a synthetic NCF training set of `rows` rows, 1 positive to 4 negatives (users, items, labels).
- in-memory: TensorLoader over those tensors (one gather per epoch, slices per batch), full epochs;
- pairs: PairLoader from the positives alone, sampling the 4 negatives per epoch (more work than
  reading them);
- streaming: StreamPairLoader (`--data-loading stream`) over the positives' CSR files on disk, reading
  windows of 1/20 of the positives and sampling their negatives exactly, as `pairs` does;
- naive: Dataset.__getitem__ per example + default collate, timed over a few batches.
Each figure is the median of `--repeats` runs in this one process. Peak memory of streaming against
in-memory is measured in child processes (peak RSS minus the RSS after imports).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, median_time, peak_rss_mib, publish, table  # noqa: E402
from recscale.data.dataset.csr import CSRFile, write_csr  # noqa: E402
from recscale.data.loading.batch import PairBatch  # noqa: E402
from recscale.data.loading.memory import PairLoader, TensorLoader, UserRowLoader
from recscale.data.loading.prefetch import Prefetcher  # noqa: E402
from recscale.data.loading.stream import StreamPairLoader  # noqa: E402

N_USERS, N_ITEMS = 138_493, 26_744


def synthetic_pairs(rows: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    n_pos = rows // 5
    users = torch.randint(N_USERS, (n_pos,), generator=g)
    items = torch.randint(N_ITEMS, (n_pos,), generator=g)
    loader = PairLoader(users, items, N_ITEMS, batch_size=rows, negatives=4, seed=seed)
    u, i, y = loader.epoch_tensors()
    return (users, items), (u, i, y)


class NaiveDataset(torch.utils.data.Dataset):
    def __init__(self, users, items, labels):
        self.users, self.items, self.labels = users, items, labels

    def __len__(self):
        return self.users.numel()

    def __getitem__(self, index):
        return self.users[index], self.items[index], self.labels[index]


def consume(loader, max_batches=None) -> int:
    seen = 0
    for b, batch in enumerate(loader):
        seen += len(batch) if not isinstance(batch, (list, tuple)) else batch[0].shape[0]
        if max_batches is not None and b + 1 >= max_batches:
            break
    return seen


def rate(make_loader, repeats, max_batches=None) -> float:
    results = []
    for r in range(repeats):
        loader = make_loader()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(r)
        start = time.perf_counter()
        n = consume(loader, max_batches)
        results.append(n / (time.perf_counter() - start))
    return float(np.median(results))


def prefetch_ratio(repeats: int) -> tuple[float, float]:
    """Epoch time of Mult-VAE-like work (CSR rows -> dense batch, then a 20,000 x 600 matmul as the
    step) without and with the background Prefetcher, on CPU."""
    import scipy.sparse as sp
    matrix = sp.random(20_000, 20_000, density=0.005, format="csr", random_state=0, dtype=np.float32)
    weight = torch.randn(20_000, 600)
    users = torch.arange(20_000)

    def epoch(wrap):
        loader = UserRowLoader(matrix, users, batch_size=500)
        for batch in (Prefetcher(loader, "cpu") if wrap else loader):
            batch.rows @ weight

    plain, _ = median_time(lambda: epoch(False), repeats)
    fetched, _ = median_time(lambda: epoch(True), repeats)
    return plain, fetched


def write_positives(users: torch.Tensor, items: torch.Tensor, root: Path) -> Path:
    """The distinct positives as a prepared training split's CSR files (what streaming reads)."""
    frame = pl.DataFrame({"user": users.numpy().astype(np.int32), "item": items.numpy().astype(np.int32)})
    frame = frame.unique().sort("user", "item").with_columns(pl.lit(1.0, pl.Float32).alias("rating"))
    frame.write_parquet(root / "train.parquet")
    write_csr(root / "train.parquet", root, "train", N_USERS)
    return root


def stream_loader(root: str, batch: int) -> StreamPairLoader:
    csr = CSRFile(Path(root), "train", N_ITEMS, memory=False)
    return StreamPairLoader(csr, batch, window=max(1, csr.nnz // 20), negatives=4)


def memory_child(kind: str, root: str, batch: int) -> None:
    """Run one epoch of a loader in this (child) process and print the peak RSS it added."""
    base = peak_rss_mib()
    if kind == "streaming":
        loader = stream_loader(root, batch)
    else:
        frame = pl.read_parquet(Path(root) / "train.parquet")
        users, items = (torch.from_numpy(frame[c].to_numpy().astype(np.int64)) for c in ("user", "item"))
        del frame
        loader = PairLoader(users, items, N_ITEMS, batch, negatives=4)
    consume(loader)
    print(f"{peak_rss_mib() - base:.0f}")


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--rows", type=int, default=20_000_000)
    parser.add_argument("--batch-sizes", default="65536,1048576")
    parser.add_argument("--naive-samples", type=int, default=1_100_000, help="examples timed per naive run")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "PATH", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return memory_child(args.child[0], args.child[1], int(args.child[2]))

    torch.set_num_threads(torch.get_num_threads())
    (pos_u, pos_i), (u, i, y) = synthetic_pairs(args.rows)
    tmp = Path(tempfile.mkdtemp())
    root = write_positives(pos_u, pos_i, tmp)

    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        naive_batches = max(1, args.naive_samples // batch)
        naive = rate(lambda: torch.utils.data.DataLoader(NaiveDataset(u, i, y), batch_size=batch, shuffle=True),
                     args.repeats, naive_batches)
        memory = rate(lambda: TensorLoader({"users": u, "items": i, "labels": y}, PairBatch, batch), args.repeats)
        pairs = rate(lambda: PairLoader(pos_u, pos_i, N_ITEMS, batch, negatives=4), args.repeats)
        stream = rate(lambda: stream_loader(str(root), batch), args.repeats)
        rows.append([f"{batch:,}", f"{naive / 1e6:.3f}", f"{memory / 1e6:.1f} ({memory / naive:.0f}x)",
                     f"{pairs / 1e6:.1f} ({pairs / naive:.0f}x)", f"{stream / 1e6:.1f} ({stream / naive:.0f}x)"])
        print(rows[-1], flush=True)

    batch = 65_536
    mem = {}
    for kind in ("memory", "streaming"):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(root), str(batch)],
                             capture_output=True, text=True, check=True)
        mem[kind] = float(out.stdout.strip().splitlines()[-1])
    file_mib = sum(f.stat().st_size for f in tmp.glob("train.*.npy")) / 2**20
    raw_mib = args.rows * (8 + 8 + 4) / 2**20
    print(mem)
    plain, fetched = prefetch_ratio(args.repeats)

    body = f"""## Loader throughput (`benchmarks/loader.py`)

{machine()}. {args.rows:,} rows (1 positive : 4 negatives, ml-20m's id ranges), million samples/s,
median of {args.repeats} runs in one process; in brackets the ratio to the naive loader measured in
the same run. Naive: `Dataset.__getitem__` + `DataLoader(batch_size=B, shuffle=True)`, timed over
{args.naive_samples:,} examples per run. *pairs* samples its 4 negatives per positive every epoch
(vectorized rejection of positives), so it does strictly more work than reading them.

{table(["batch", "naive", "in-memory", "pairs (sampling negatives)", "streaming (CSR files on disk)"], rows)}

Streaming memory bound, one epoch at batch {batch:,}: the positives' CSR files are {file_mib:.0f} MiB on
disk, the in-memory epoch {raw_mib:.0f} MiB as tensors; streaming reads windows of 1/20 of the positives
and samples their negatives from the window users' rows. Peak RSS added by the loader: in-memory
(PairLoader) {mem['memory']:.0f} MiB, streaming {mem['streaming']:.0f} MiB.

Prefetch (`Prefetcher`) on CPU, Mult-VAE-like epoch (20,000 users x 20,000 items, CSR rows made dense
per batch of 500, a 20,000 x 600 matmul as the step): {plain:.2f} s without, {fetched:.2f} s with the
background thread ({plain / fetched:.2f}x). With 2 cores the step's own threads already use the
machine, so the trainer prefetches only for CUDA targets (pinned memory, `non_blocking=True` copies).
"""
    publish(args, "loader", body)


if __name__ == "__main__":
    main()

"""Data larger than memory: `recscale prepare --engine stream` and `--data-loading stream` training
at 20M, 100M and 200M interactions, wall time and peak resident memory.

    python benchmarks/out_of_core.py                       # all sizes: about an hour on 2 cores
    python benchmarks/out_of_core.py --sizes 2 --no-write   # a smoke run (2M)

Logs: Netflix-like shape (17,770 items, 4,800 users per million interactions: 480,189 users at
100M), Zipf item popularity, heavy-tailed user activity, ratings 1-5, written in chunks as CSV
(and as Parquet for the first size) by this script, never held whole.

Each measurement runs in a fresh process; peak RSS is the process's VmHWM (what the kernel saw).
- prepare: `recscale prepare --ratings LOG --protocol ncf|vae --engine E`; at the first size
  also `--engine memory`, for comparison.
- training: NeuMF (batch 65,536, 4 negatives) and Mult-VAE (batch 500) through the trainer's own
  loader and step (training/build.py), `--steps` timed steps after a few warm-up steps; the
  epoch time is extrapolated from the rate (an epoch at 200M is 10^9 NeuMF samples). The model and
  its Adam state are reported apart (they grow with users and items, not with interactions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402

ITEMS = 17_770
USERS_PER_MILLION = 4_800
CHUNK_USERS = 50_000
STREAM_BUDGET = "1GiB"


def write_log(path: Path, interactions: int, seed: int = 0) -> int:
    """A synthetic log of about `interactions` rows, a chunk of users at a time; returns the rows."""
    rng = np.random.default_rng(seed)
    users = max(10, interactions * USERS_PER_MILLION // 1_000_000)
    popularity = 1.0 / np.arange(1, ITEMS + 1) ** 0.9
    popularity = (popularity / popularity.sum())[rng.permutation(ITEMS)]
    activity = rng.pareto(1.2, users) + 1
    cap = ITEMS // 3
    share = activity / activity.sum() * interactions
    for _ in range(5):  # users over the cap keep the cap; the others share the rest
        capped = share >= cap
        rest = interactions - cap * capped.sum()
        share = np.where(capped, cap, share / share[~capped].sum() * rest)
    counts = np.clip(np.round(share), 5, cap).astype(np.int64)
    schema = pa.schema([("userId", pa.int64()), ("movieId", pa.int64()), ("rating", pa.float64()),
                        ("timestamp", pa.int64())])
    writer = (pq.ParquetWriter(path, schema) if path.suffix == ".parquet"
              else pacsv.CSVWriter(path, schema))
    rows = 0
    for first in range(0, users, CHUNK_USERS):
        chunk = counts[first:first + CHUNK_USERS]
        n = int(chunk.sum())
        table_ = pa.table({
            "userId": np.repeat(np.arange(first, first + chunk.size) + 1, chunk),
            "movieId": rng.choice(ITEMS, n, p=popularity) + 1,
            "rating": rng.integers(1, 6, n).astype(np.float64),
            "timestamp": rng.integers(1_000_000_000, 1_200_000_000, n)}, schema=schema)
        writer.write_table(table_)
        rows += n
    writer.close()
    return rows


PREPARE_CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
from common import peak_rss_mib
from recscale.cli import main
start = time.perf_counter()
code = main(["prepare", "--ratings", {log!r}, "--protocol", {protocol!r}, "--engine", {engine!r},
             "--memory-budget", {budget!r}, "--test-negatives", "100", "--out", {out!r}, "--overwrite"])
print(json.dumps({{"code": code, "seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}}))
"""

TRAIN_CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
import torch
from common import peak_rss_mib
from recscale.training.build import (build_model, build_trainer, open_data, pick_device, resolve_data_loading,
                                     resolve_run_config, seeded)
from recscale.data.dataset.prepared import PreparedDataset
settings = dict(data={data!r}, model={model!r}, data_loading={mode!r}, memory_budget={budget!r},
                batch_size={batch}, negatives=4, epochs=1, progress=False)
cfg = resolve_run_config(settings)
cfg = resolve_data_loading(cfg, PreparedDataset(cfg.data))
data = open_data(cfg)
device = pick_device("cpu")
with seeded(0, device):
    model, _ = build_model(cfg, {{}}, data)
    trainer = build_trainer(cfg, model, data, device)
    trainer.logger.enabled = False
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    trainer.loader.set_epoch(0)
    batches = iter(trainer.loader)
    for _ in range({warm}):
        trainer.train_step(next(batches))
    seen, step_seconds = 0, 0.0
    for _ in range({steps}):
        batch = next(batches)  # the loader's work is timed apart, below
        start = time.perf_counter()
        trainer.train_step(batch)
        step_seconds += time.perf_counter() - start
        seen += len(batch)
    del batches, batch  # the training iterator's epoch (or window) is freed, as at the end of an epoch
    # the loader alone: a whole epoch in memory (its cost is paid once per epoch), else at least three
    # shuffle windows (each window's reads and sampling are paid when it starts)
    loader = trainer.loader
    plan = getattr(loader, "plan", None)
    limit = len(loader)
    if cfg.loader.data_loading == "stream":
        limit = min(limit, 3 * -(-plan.window * loader.per_positive // loader.batch_size) if plan else 400)
    loader.set_epoch(1)
    read, start = 0, time.perf_counter()
    for b, batch in enumerate(loader):
        read += len(batch)
        if b + 1 >= limit:
            break
    loader_seconds = time.perf_counter() - start
rate = 1 / (step_seconds / seen + loader_seconds / read)
per_epoch = len(trainer.loader) * cfg.loader.batch_size
print(json.dumps({{"rate": rate, "epoch_seconds": per_epoch / rate, "peak_mib": peak_rss_mib(),
                  "loader_rate": read / loader_seconds, "step_rate": seen / step_seconds,
                  "state_mib": 3 * params / 2**20, "mode": cfg.loader.data_loading}}))
"""


def child(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"child failed:\n{result.stderr[-3000:]}")
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if record.get("code", 0) != 0:
        raise SystemExit(f"prepare failed: {result.stderr[-3000:]}")
    return record


def prepare(log: Path, protocol: str, engine: str, out: Path) -> dict:
    bench = str(Path(__file__).resolve().parent)
    return child(PREPARE_CHILD.format(bench=bench, log=str(log), protocol=protocol, engine=engine,
                                      budget=STREAM_BUDGET, out=str(out)))


def train(data: Path, model: str, mode: str, steps: int) -> dict:
    bench = str(Path(__file__).resolve().parent)
    batch = 65_536 if model == "neumf" else 500
    return child(TRAIN_CHILD.format(bench=bench, data=str(data), model=model, mode=mode, budget=STREAM_BUDGET,
                                    batch=batch, warm=3, steps=steps))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in sorted({r["label"] for r in rows}):
        points = sorted((r["millions"], r["peak_mib"] / 1024) for r in rows if r["label"] == label)
        ax.plot(*zip(*points), marker="o", label=label)
    ax.axhline(4, color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("interactions (millions)")
    ax.set_ylabel("peak RSS (GiB)")
    ax.set_title("recscale out of core: peak memory against log size")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--sizes", default="20,100,200", help="millions of interactions")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--workdir", default=None, help="where logs and datasets go (default: a temp dir)")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",")]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="recscale-ooc-"))
    work.mkdir(parents=True, exist_ok=True)
    prepare_rows, train_rows, points = [], [], []
    for index, millions in enumerate(sizes):
        first = index == 0
        csv = work / f"log-{millions:g}M.csv"
        start = time.perf_counter()
        rows = write_log(csv, int(millions * 1e6))
        print(f"{millions:g}M: wrote {rows:,} rows ({csv.stat().st_size / 2**30:.1f} GiB CSV) in "
              f"{time.perf_counter() - start:.0f}s", flush=True)
        inputs = [csv]
        if first:
            inputs.append(work / f"log-{millions:g}M.parquet")
            write_log(inputs[-1], int(millions * 1e6))
        for log in inputs:
            for protocol in ("ncf", "vae"):
                for engine in (("memory", "stream") if first else ("stream",)):
                    out = work / f"data-{millions:g}M-{protocol}-{engine}-{log.suffix[1:]}"
                    record = prepare(log, protocol, engine, out)
                    label = f"prepare {protocol} ({engine}, {log.suffix[1:]})"
                    prepare_rows.append([f"{rows / 1e6:.0f}M", log.suffix[1:].upper(), protocol, engine,
                                         f"{record['seconds']:.0f}", f"{record['peak_mib'] / 1024:.2f}"])
                    points.append({"label": label, "millions": rows / 1e6, "peak_mib": record["peak_mib"]})
                    print(prepare_rows[-1], flush=True)
                    if engine == "memory" or log.suffix == ".parquet":
                        shutil.rmtree(out, ignore_errors=True)
        for model, protocol in (("neumf", "ncf"), ("multvae", "vae")):
            data = work / f"data-{millions:g}M-{protocol}-stream-csv"
            for mode in (("memory", "stream") if first else ("stream",)):
                record = train(data, model, mode, args.steps)
                unit = "samples/s" if model == "neumf" else "users/s"
                train_rows.append([f"{rows / 1e6:.0f}M", model, mode, f"{record['rate']:,.0f} {unit}",
                                   f"{record['loader_rate']:,.0f}",
                                   f"{record['epoch_seconds'] / 60:.1f}", f"{record['peak_mib'] / 1024:.2f}",
                                   f"{record['state_mib'] / 1024:.2f}"])
                points.append({"label": f"train {model} ({mode})", "millions": rows / 1e6,
                               "peak_mib": record["peak_mib"]})
                print(train_rows[-1], flush=True)
        for protocol in ("ncf", "vae"):
            shutil.rmtree(work / f"data-{millions:g}M-{protocol}-stream-csv", ignore_errors=True)
        for log in inputs:
            log.unlink()

    figure = Path(__file__).resolve().parent / "out_of_core.png"
    plot(points, figure)
    body = f"""## Out of core (`benchmarks/out_of_core.py`)

{machine()}. Synthetic Netflix-shaped logs (17,770 items, 4,800 users per
million interactions), CSV (and Parquet at the first size). Every figure from one fresh process;
peak RSS is the kernel's high-water mark of that process (Python, PyTorch and Polars included).
Streaming runs with `--memory-budget {STREAM_BUDGET}`.

`recscale prepare` (wall seconds, peak RSS GiB):

{table(["interactions", "input", "protocol", "engine", "seconds", "peak RSS GiB"], prepare_rows)}

One training epoch, extrapolated from {args.steps} timed steps (after 3 warm-up steps) and, apart, the
loader alone (a whole epoch in memory; at least three shuffle windows when streaming, up to the whole
epoch): rate = 1 / (step time + loader time) per sample, as the CPU trainer runs them one after the
other. NeuMF: batch 65,536 with 4 negatives per positive; Mult-VAE: batch 500 users. *model + Adam* is
the parameters and the two Adam moments, which grow with users and items and are part of the peak RSS:

{table(["interactions", "model", "data loading", "rate", "loader alone /s", "epoch (min)", "peak RSS GiB",
        "model + Adam GiB"],
       train_rows)}

![peak RSS against log size](benchmarks/out_of_core.png)
"""
    publish(args, "out-of-core", body)


if __name__ == "__main__":
    main()

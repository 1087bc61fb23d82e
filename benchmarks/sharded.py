"""Sharded embedding tables (`--embeddings sharded`) against replicated ones (DDP) on 2 CPU workers:
per-worker table memory, peak resident memory and training samples/s of NeuMF.

    python benchmarks/sharded.py                  # both shapes: about 10 minutes on 2 cores
    python benchmarks/sharded.py --no-write --shapes ml-20m --repeats 1

Shapes: ml-20m (138,493 users x 26,744 items) and a synthetic 10M users x 1M items, NeuMF with its
defaults (64 GMF factors, MLP tower 256-256-128-64: 192 table columns per id). Each measurement is
one `torchrun --nproc-per-node 2` group of fresh processes; the workers build the model and the
optimizers exactly as `recscale train` does (training/build.py, parallel/sharding.py) and time `--steps`
training steps on random (user, item, label) batches after 3 warm-up steps (the data loader is
measured in loader.py, not here). Samples/s is the global batch over the slower worker's time.

Replicated runs are NeuMF under DDP as `recscale train --nproc 2` runs it: dense table gradients
(DDP all-reduces every table each step) and the run's optimizer. Sharded runs let TorchRec's planner
place the tables, with FBGEMM's fused optimizer. Two optimizer settings are timed: each mode's
default (DDP Adam; sharded row-wise Adagrad, as auto picks on CPU) and Adagrad in both. Sharded
runs give TorchRec's planner `--table-memory` = the budget less 1.4 GiB (what a worker takes besides
its shards); without a cap the planner places whole tables for speed and does not balance memory.

A replicated shape is run only if its estimated need fits the per-worker budget: parameters +
gradients + optimizer state (two moments for Adam, one for Adagrad) of every table on every worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, peak_rss_mib, publish, table  # noqa: E402

SHAPES = {"ml-20m": (138_493, 26_744), "10M x 1M": (10_000_000, 1_000_000)}
COLUMNS = 64 + 128  # GMF factors + half the tower's first width, per user and per item
GIB = 2 ** 30
FAILURES: list[str] = []
OVERHEAD_GIB = 1.4  # a worker's memory besides its table shards: Python, PyTorch, TorchRec, dense part, batches


def worker(args) -> None:
    import torch

    from recscale import distributed, sharding
    from recscale.config.layers import build_run_config
    from recscale.data.loading.batch import PairBatch
    from recscale.models.base import DataShape
    from recscale.models.ncf import NeuMF
    from recscale.models.tables import deferred_tables
    from recscale.optim.factory import make_optimizers

    info, device = distributed.from_env(), torch.device("cpu")
    distributed.init(info, device)
    users, items = SHAPES[args.shape]
    cfg = build_run_config({"data": "synthetic", "model": "neumf", "batch_size": args.batch, "optimizer": args.optimizer,
                            "lr": 0.002 if args.optimizer == "adam" else 0.05, "embeddings": args.mode,
                            "sharding": args.sharding, "table_memory": args.table_memory})
    torch.manual_seed(0)
    start = time.perf_counter()
    with deferred_tables() if args.mode == "sharded" else contextlib.nullcontext():
        model = NeuMF(DataShape(users, items), NeuMF.Config(embedding_gradients="dense"))
    if args.mode == "sharded":
        net, fused = sharding.shard(model, cfg.optim, cfg.system, device, info.world_size)
        table_bytes = sharding.local_table_bytes(model)
    else:
        net, fused = distributed.wrap(model, info, device), None
        table_bytes = sum(p.numel() * p.element_size() for p in model.tables.parameters())
    optimizers = make_optimizers(model, cfg.optim.optimizer, cfg.optim.lr, fused=fused)
    build_seconds = time.perf_counter() - start
    local = args.batch // info.world_size
    g = torch.Generator().manual_seed(info.rank)
    batches = [PairBatch(torch.randint(users, (local,), generator=g), torch.randint(items, (local,), generator=g),
                         torch.randint(2, (local,), generator=g).float()) for _ in range(4)]

    def step(batch):
        loss = net(batch).loss
        optimizers.zero_grad()
        loss.backward()
        optimizers.step(torch.amp.GradScaler("cpu", enabled=False))

    for i in range(3):
        step(batches[i % 4])
    distributed.barrier()
    start = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % 4])
    seconds = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
    torch.distributed.all_reduce(seconds, op=torch.distributed.ReduceOp.MAX)
    peak = torch.tensor([peak_rss_mib(), table_bytes / 2 ** 20], dtype=torch.float64)
    gathered = [torch.zeros_like(peak) for _ in range(info.world_size)]
    torch.distributed.all_gather(gathered, peak)
    if info.rank == 0:
        print(json.dumps({"samples_per_second": args.batch * args.steps / float(seconds),
                          "peak_mib": [float(t[0]) for t in gathered], "table_mib": [float(t[1]) for t in gathered],
                          "build_seconds": build_seconds}))
    net = fused = optimizers = model = None  # released before the process group ends (see distributed.destroy)
    distributed.destroy()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure(shape: str, mode: str, optimizer: str, table_memory: str, batch: int, steps: int) -> dict | None:
    """One worker group's figures; None when TorchRec's planner finds no placement within table_memory."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), __file__, "--worker", "--shape", shape, "--mode", mode,
               "--optimizer", optimizer, "--table-memory", table_memory, "--batch", str(batch), "--steps", str(steps)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}
    for attempt in range(3):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if result.returncode == 0:
            return json.loads(next(line for line in reversed(result.stdout.splitlines()) if line.startswith("{")))
        if "TorchRec cannot shard" in result.stderr:
            return None
        # Seen 3 times in ~40 groups: a worker aborts ("terminate called without an active
        # exception"); counted and logged, the group run again.
        FAILURES.append(f"{shape} {mode} {optimizer}")
        Path("sharded-failures.log").open("a").write(result.stderr[-20000:] + "\n----\n")
    raise SystemExit(f"{shape} {mode} {optimizer} failed 3 times:\n" + result.stderr[-3000:])


def replicated_need_gib(shape: str, optimizer: str) -> float:
    users, items = SHAPES[shape]
    states = 2 if optimizer == "adam" else 1
    return (users + items) * COLUMNS * 4 * (2 + states) / GIB


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", default="ml-20m", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sharded", help=argparse.SUPPRESS)
    parser.add_argument("--optimizer", default="adam", help=argparse.SUPPRESS)
    parser.add_argument("--sharding", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--table-memory", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--batch", type=int, default=16_384, help="global batch (pairs per step)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--budget-gib", type=float, default=6.0, help="memory one worker may take")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rows = []
    table_memory = f"{args.budget_gib - OVERHEAD_GIB:g}GiB"
    for shape in args.shapes.split(","):
        settings = [("replicated", "adam"), ("sharded", "adam"), ("replicated", "adagrad"), ("sharded", "adagrad")]
        for mode, optimizer in settings:
            label = "rowwise_adagrad (auto)" if mode == "sharded" and optimizer == "adam" else optimizer
            if mode == "replicated" and replicated_need_gib(shape, optimizer) > args.budget_gib:
                rows.append([shape, mode, label, "not run", "", "",
                             f"needs ~{replicated_need_gib(shape, optimizer):.1f} GiB per worker"])
                print(rows[-1], flush=True)
                continue
            repeats = args.repeats if SHAPES[shape][0] < 1_000_000 else 1
            runs = [measure(shape, mode, optimizer, table_memory, args.batch, args.steps) for _ in range(repeats)]
            if runs[0] is None:
                rows.append([shape, mode, label, "not run", "", "", f"no placement within --table-memory {table_memory}"])
                print(rows[-1], flush=True)
                continue
            rate = statistics.median(r["samples_per_second"] for r in runs)
            last = runs[-1]
            rows.append([shape, mode, label, f"{rate:,.0f}",
                         " / ".join(f"{m / 1024:.2f}" for m in last["table_mib"]),
                         " / ".join(f"{m / 1024:.2f}" for m in last["peak_mib"]),
                         f"{len(runs)} run(s): " + ", ".join(f"{r['samples_per_second']:,.0f}" for r in runs)])
            print(rows[-1], flush=True)
    body = f"""## Sharded embedding tables (`benchmarks/sharded.py`)

{machine()}. 2 gloo workers (`torchrun --nproc-per-node 2`, one thread each), NeuMF with
its defaults (192 table columns per user and per item), global batch {args.batch:,}, {args.steps} timed steps
after 3 warm-up steps on random batches (the median of {args.repeats} runs at ml-20m shape, one run at
10M x 1M). Per-worker budget {args.budget_gib:g} GiB: a replicated setting whose estimated need
(tables + gradients + optimizer state on every worker) passes it is not run, and a sharded one is
not run when the planner finds no placement within `--table-memory`. Tables and peak RSS are
per worker (worker 0 / worker 1); the peak includes Python, PyTorch, TorchRec and the model's dense part.
Worker groups that aborted and were run again: {len(FAILURES)} ({"; ".join(FAILURES) or "none"}).

{table(["shape", "tables", "optimizer (tables)", "samples/s", "tables GiB per worker", "peak RSS GiB per worker",
        "runs"], rows)}
"""
    publish(args, "sharded", body)


if __name__ == "__main__":
    main()

"""Fold-in of pairwise models: how close a new user's folded-in vectors come to trained ones, and
what the fold-in costs per request.

    python benchmarks/foldin.py              # about 8 minutes on 2 cores (--work DIR reuses the run)

NeuMF (the default settings, 10 epochs) trained on the embedded ml-latest-small under the `random`
protocol. Every test user is then ranked (full ranking, known items masked) three ways from the
same history (train + valid): with its trained vectors; as a new user, its vectors folded in
from that history by `FoldIn` (models/foldin.py: Adam steps against a fixed pool of negatives,
every trained weight frozen; the rate decays linearly to 0), for a grid of steps and first rates; and by popularity. Latency: one
user's fold-in and full-catalog scoring, eager PyTorch on one thread, p50 and p99 over
`--latency-users` users with the median history length and with the longest.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, prepared, publish, table, workdir  # noqa: E402

GRID = [(5, 0.04), (10, 0.01), (10, 0.02), (10, 0.05), (20, 0.01), (20, 0.02)]
KS = (10,)


@torch.no_grad()
def ranking(model, data, trained, block_bytes=64 << 20) -> dict:
    from recscale.evaluation.protocols import evaluation_sets, full_ranking
    return full_ranking(model, data, evaluation_sets(data, "test"), KS, "cpu", 1024, block_bytes=block_bytes,
                        trained=trained)


@torch.no_grad()
def latency(model, data, users: np.ndarray) -> tuple[float, float]:
    """(p50, p99) milliseconds of folding in one user and scoring the whole catalog."""
    from recscale.evaluation.protocols import dense_rows
    rows = data.rows("train", "valid")
    times = []
    for u in users:
        history = dense_rows(rows, np.array([u]), "cpu")
        started = time.perf_counter()
        model.fold_in_scorer(history)(slice(None))
        times.append((time.perf_counter() - started) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--latency-users", type=int, default=100)
    parser.add_argument("--work", help="folder for the prepared data and the trained run, reused when they are "
                        "there [default: a fresh temporary folder]")
    args = parser.parse_args()
    import recscale
    from recscale.data.ingest.sources import load_dataset
    from recscale.models.foldin import FoldInConfig
    from recscale.models.popularity import Popularity
    from recscale.training.build import data_shape

    work = Path(args.work) if args.work else workdir("foldin")
    data = recscale.open_dataset(prepared(load_dataset("ml-latest-small"), work / "random", protocol="random"))
    if (work / "neumf" / "checkpoints" / "best.pt").exists():
        run = recscale.load_run(work / "neumf", "cpu")
    else:
        run = recscale.train(data, "neumf", work / "neumf", device="cpu", progress=False, epochs=args.epochs)
    model = run.loaded.model.eval()
    every, nobody = np.ones(data.n_users, dtype=bool), np.zeros(data.n_users, dtype=bool)
    trained = ranking(model, data, every)
    popularity = Popularity(data_shape(data))
    popularity.fit(torch.sparse_coo_tensor(np.vstack(data.rows("train").nonzero()),
                                           torch.ones(data.rows("train").nnz), (data.n_users, data.n_items)).coalesce())
    popular = ranking(popularity, data, every)
    rows = [["trained vectors", "", "", f"{trained['hr@10']:.4f}", f"{trained['ndcg@10']:.4f}"],
            ["popularity", "", "", f"{popular['hr@10']:.4f}", f"{popular['ndcg@10']:.4f}"]]
    default = FoldInConfig()
    for steps, lr in GRID:
        model.fold_in_config = dataclasses.replace(default, steps=steps, lr=lr)
        folded = ranking(model, data, nobody)
        label = "fold-in (default)" if (steps, lr) == (default.steps, default.lr) else "fold-in"
        rows.append([label, steps, lr, f"{folded['hr@10']:.4f}", f"{folded['ndcg@10']:.4f}"])
        print(rows[-1], flush=True)
    model.fold_in_config = default
    torch.set_num_threads(1)  # latency: one request on one core, as the server's batcher runs it
    lengths = np.diff(data.rows("train", "valid").indptr)
    order = np.argsort(lengths)
    median_users = order[len(order) // 2 - args.latency_users // 2:][:args.latency_users]
    p50, p99 = latency(model, data, median_users)
    long50, long99 = latency(model, data, np.repeat(order[-1], max(10, args.latency_users // 10)))
    body = f"""## Fold-in of pairwise models (`benchmarks/foldin.py`)

{machine()}.

NeuMF (default settings, {args.epochs} epochs) on the embedded ml-latest-small, `random` protocol
({data.n_users:,} users x {data.n_items:,} items). Each of the {trained['users']:,} test users is ranked
over the whole catalog (known items masked) from the same history (train + valid): with its
trained vectors, folded in as a new user (`FoldIn`: Adam steps on the history against a fixed pool
of {default.pool} negatives, every trained weight frozen), and by popularity.

{table(["user vectors", "steps", "first rate", "HR@10", "NDCG@10"], rows)}

Latency of one new user (fold-in with the default {default.steps} steps at {default.lr}, then the
whole catalog scored), eager PyTorch on one thread: median history ({int(np.median(lengths[median_users]))}
items) p50 {p50:.1f} ms, p99 {p99:.1f} ms over {median_users.size} users; the longest history
({int(lengths[order[-1]]):,} items) p50 {long50:.1f} ms, p99 {long99:.1f} ms.
"""
    publish(args, "foldin", body)


if __name__ == "__main__":
    main()

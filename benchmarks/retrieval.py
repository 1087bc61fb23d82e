"""Top-k retrieval over a 1M-item catalog: FAISS IVF against exact inner-product search.

    python benchmarks/retrieval.py          # about 5 minutes on 2 cores

Catalog: 1,000,000 synthetic item vectors of dimension 64 with the structure trained embeddings
have (2,000 clusters: a Gaussian center each, items spread around it, norms varying as popularity
does); 2,000 queries drawn the same way (user vectors near some clusters). Exact: IndexFlatIP
(recscale serve --index flat). Approximate: IndexIVFFlat with inner product, about 4 sqrt(items)
cells (4,000 here, the server's default) trained on 64 items per cell (recscale serve --index ivf,
whose default nprobe is 16), at several nprobe. Recall@10: the share of the exact top
10 that the approximate search returns, over all queries. Queries/s: the whole query set searched
in one call (batched, as the server's micro-batches are), median of 3, both in this one process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402
from recscale.serving.index import ItemIndex, default_nlist  # noqa: E402


def catalog(n_items: int, n_queries: int, dim: int, clusters: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    weight = 1.0 / np.arange(1, clusters + 1) ** 0.8  # some clusters hold many more items
    member = rng.choice(clusters, n_items, p=weight / weight.sum())
    norms = rng.lognormal(0.0, 0.3, n_items).astype(np.float32)[:, None]  # popular items score higher
    items = (centers[member] + 0.6 * rng.normal(size=(n_items, dim)).astype(np.float32)) * norms
    queries = centers[rng.choice(clusters, n_queries)] + 0.6 * rng.normal(size=(n_queries, dim)).astype(np.float32)
    return items.astype(np.float32), queries.astype(np.float32)


def timed(index: ItemIndex, queries: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    times, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        _, found = index.search(queries, k)
        times.append(time.perf_counter() - start)
    return queries.shape[0] / statistics.median(times), found


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--nlist", type=int, default=0, help="IVF cells (0: the server's default, about 4 sqrt(items))")
    parser.add_argument("--nprobes", default="8,16,32,64")
    args = parser.parse_args()
    k = 10
    items, queries = catalog(args.items, args.queries, args.dim, clusters=2_000)
    started = time.perf_counter()
    exact = ItemIndex(items, "flat")
    exact_build = time.perf_counter() - started
    exact_rate, truth = timed(exact, queries, k, args.repeats)
    print(f"exact: {exact_rate:,.0f} queries/s (built in {exact_build:.1f}s)", flush=True)
    rows = [["exact (flat)", "-", "1.000", f"{exact_rate:,.0f}", "1.0x", f"{exact_build:.1f}"]]
    started = time.perf_counter()
    nlist = args.nlist or default_nlist(args.items)
    ivf = ItemIndex(items, "ivf", nlist=nlist, nprobe=1)
    ivf_build = time.perf_counter() - started
    for nprobe in [int(p) for p in args.nprobes.split(",")]:
        ivf.index.nprobe = nprobe
        rate, found = timed(ivf, queries, k, args.repeats)
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(found.tolist(), truth.tolist())])
        rows.append([f"ivf, {nlist:,} cells", str(nprobe), f"{recall:.3f}", f"{rate:,.0f}",
                     f"{rate / exact_rate:.1f}x", f"{ivf_build:.1f}"])
        print(rows[-1], flush=True)
    body = f"""## Retrieval over a 1M-item catalog (`benchmarks/retrieval.py`)

{machine()}. FAISS {__import__('faiss').__version__}.

{args.items:,} synthetic item vectors (dimension {args.dim}, 2,000 clusters of uneven size, norms
varying like popularity), {args.queries:,} queries, top {k} by inner product. Recall@10 against the
exact search; queries/s of the whole query set in one call, median of {args.repeats}; build: seconds
to build the index (IVF: k-means training on 64 items per cell + adding all).

{table(["index", "nprobe", "recall@10", "queries/s", "vs exact", "build s"], rows)}
"""
    publish(args, "retrieval", body)


if __name__ == "__main__":
    main()

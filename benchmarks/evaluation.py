"""Full-ranking evaluation and recommendation throughput.

    python benchmarks/evaluation.py          # about 5 minutes on 2 cores

A synthetic catalog of 20,000 items with power-law popularity; 140,000 users with 5 to 100
interactions each (about 3.6M in all), prepared under the `vae` protocol with 10,000 test users.
A Mult-VAE (I-600-200-600-I) trained for one epoch is then
- evaluated on the test users: every item ranked, fold-in items masked, Recall/NDCG/MRR at
  K = 10, 20, 50, 100 (users/s, median of 3 runs);
- asked for the top 100 unseen items of all 140,000 users, written to Parquet in chunks (users/s,
  peak RSS of that child process against the RSS after loading: memory must not grow with users).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, peak_rss_mib, publish, table  # noqa: E402


def synthetic(n_users: int, n_items: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity /= popularity.sum()
    counts = np.clip(rng.geometric(1 / 25, n_users) + 4, 5, 100)
    users = np.repeat(np.arange(n_users), counts)
    items = rng.choice(n_items, size=users.size, p=popularity)
    return pl.DataFrame({"user": users, "item": items, "rating": np.full(users.size, 5.0, np.float32),
                         "timestamp": np.arange(users.size)}).unique(["user", "item"])


def child(kind: str, run: str, out: str) -> None:
    import recscale
    from recscale.evaluation.protocols import evaluate
    from recscale.recommend import read_user_file

    loaded = recscale.load_run(run, "cpu")
    model, data, device = loaded.model, loaded.data, loaded.loaded.device
    base = peak_rss_mib()
    if kind == "evaluate":
        times = []
        for _ in range(3):
            start = time.perf_counter()
            result = evaluate(model, data, "test", ks=(10, 20, 50, 100), device=device)
            times.append(time.perf_counter() - start)
        print(json.dumps({"users": result["users"], "seconds": statistics.median(times)}))
    else:
        users_file = None
        n_users = data.n_users
        if kind == "recommend-quarter":  # the same work for a quarter of the users
            n_users = data.n_users // 4
            users_file = Path(out).with_suffix(".users.txt")
            users_file.write_text("\n".join(map(str, data.original_user_ids()[:n_users])) + "\n")
        start = time.perf_counter()
        rows = loaded.write_recommendations(out, read_user_file(users_file, data) if users_file else None, 100, overwrite=True)
        seconds = time.perf_counter() - start
        print(json.dumps({"users": n_users, "rows": rows, "seconds": seconds,
                          "rss_before": base, "rss_peak": peak_rss_mib()}))


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--users", type=int, default=140_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--heldout-users", type=int, default=10_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)

    import recscale
    from recscale.config.prepare import PrepareConfig
    from recscale.data.ingest.raw import RawDataset
    from recscale.data.prepare.memory import prepare

    work = Path(tempfile.mkdtemp())
    frame = synthetic(args.users, args.items)
    meta = prepare(RawDataset("synthetic", frame, None, ()),
                   PrepareConfig(protocol="vae", min_rating=0, heldout_users=args.heldout_users), work / "data")
    recscale.train(work / "data", "multvae", work / "run", epochs=1, device="cpu", progress=False)

    def run_child(kind):
        out = subprocess.run([sys.executable, __file__, "--child", kind, str(work / "run"), str(work / "recs.parquet")],
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    ev, quarter, rec = run_child("evaluate"), run_child("recommend-quarter"), run_child("recommend")
    rows = [["evaluate (test users, full ranking, K=10..100)", f"{ev['users']:,}", f"{ev['seconds']:.1f}",
             f"{ev['users'] / ev['seconds']:,.0f}", "—"]]
    for label, r in (("recommend top-100, a quarter of the users", quarter), ("recommend top-100, all users", rec)):
        rows.append([label, f"{r['users']:,}", f"{r['seconds']:.1f}", f"{r['users'] / r['seconds']:,.0f}",
                     f"{r['rss_peak'] - r['rss_before']:.0f}"])
    body = f"""## Evaluation and recommendation throughput (`benchmarks/evaluation.py`)

{machine()}. Synthetic: {meta['counts']['items']:,} items (power-law popularity),
{meta['counts']['users']:,} users, {meta['counts']['interactions']:,} interactions, `vae` protocol;
Mult-VAE I-600-200-600-I, batches of 1,024 users, CPU.

{table(["task", "users", "seconds", "users/s", "RSS growth MiB"], rows)}

RSS growth: peak resident memory of the recommend process minus its resident memory after loading
the run. The output ({rec['rows']:,} rows for all users) is written to Parquet one batch of 1,024
users at a time, so the growth is the working set of a batch (dense input rows, scores, masks)
and should not grow with the number of users: compare the two recommend rows.
"""
    publish(args, "evaluation", body)


if __name__ == "__main__":
    main()

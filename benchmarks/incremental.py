"""The daily loop: each window's model trained from scratch against one warm-started from the
previous window's, then the served bundle swapped under load.

    python benchmarks/incremental.py           # about 25 minutes on 2 cores (--epochs, --windows to trim)
    python benchmarks/incremental.py --work DIR  # reuses DIR's windows, and runs with the times they took

Two logs: the embedded ml-latest-small, and a synthetic log whose users and items arrive over time
(recscale's `synth` log with each interaction moved after both its user's and its item's arrival).
Each is cut by time at quantiles q0 < q1 < ... of its timestamps. Window k's dataset is the log up to
q(k+1), prepared under `temporal` with the cutoff at q(k) (test = the next window) and `--extend`ed
from window k-1's dataset, so every known user and item keeps its number. For every window after
the first: (a) NeuMF from scratch for `--epochs`, (b) NeuMF warm-started from the previous window's
warm run (the first window's: its scratch run) for `--warm-epochs`. Test metrics with their 95%
intervals (users first seen in the validation window are folded in; users first seen in the test
window have no history and are counted apart) and the wall time of each `train`.

Then the last window's two runs are exported and served (`recscale serve`, one worker, on
127.0.0.1) from a symlink, and `--requests` requests at concurrency 16 (new users' histories,
folded in by the server) run while the bundle is swapped `--swaps` times through the admin
endpoint: p50/p99 latency of the fold-in requests and the requests lost (goal 0).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table, workdir  # noqa: E402

QUANTILES = (0.6, 0.7, 0.8, 0.9, 1.0)
TOKEN = "incremental-benchmark-token"
METRICS = ("recall@10", "ndcg@10")


def arriving_log(users: int, items: int, interactions: int, seed: int = 0):
    """recscale's synthetic log, its time redrawn so that users and items arrive over time: user u
    arrives at a_u, item i at b_i (uniform; items within the first 70% of the span), and each of
    u's interactions with i happens at a uniform time between max(a_u, b_i) and the end."""
    from recscale.data.ingest.raw import RawDataset
    from recscale.data.ingest.synth import SynthSpec, synthesize
    raw = synthesize(SynthSpec(users, items, interactions, seed=seed)).raw
    rng = np.random.default_rng(seed + 1)
    user_arrival = rng.uniform(0, 1, users + 1)
    item_arrival = rng.uniform(0, 0.7, items + 1)
    frame = raw.interactions
    start = np.maximum(user_arrival[frame["user"].to_numpy()], item_arrival[frame["item"].to_numpy()])
    moment = start + (1 - start) * rng.uniform(0, 1, frame.height)
    frame = frame.with_columns(pl.Series("timestamp", (1_500_000_000 + moment * 3e7).astype(np.int64)))
    return RawDataset(f"arriving-{users}x{items}-{interactions}", frame.sort("user", "timestamp"), raw.items, ())


def windows(raw, root: Path, quantiles) -> list:
    """Window k's dataset: the log before quantile q(k+1), test from q(k), extending window k-1's."""
    import recscale
    from recscale.data.ingest.raw import RawDataset
    times = raw.interactions["timestamp"].to_numpy()
    bounds = [int(np.quantile(times, q)) + (1 if q == 1.0 else 0) for q in quantiles]
    datasets, parent = [], None
    for k in range(len(bounds) - 1):
        out = root / f"window{k}"
        if not (out / "meta.json").exists():
            cut = RawDataset(raw.name, raw.interactions.filter(pl.col("timestamp") < bounds[k + 1]), raw.items, ())
            recscale.prepare(cut, out, "temporal", cutoff=str(bounds[k]), **({"extend": parent} if parent else {}))
        datasets.append(recscale.open_dataset(out))
        parent = str(out)
    return datasets


def timed_train(data, out: Path, epochs: int, warm: Path | None):
    """(run, seconds of its `train` call, test metrics); a run of an earlier invocation on the same
    --work folder is reused with the time it measured then (timing.json beside it)."""
    import recscale
    timing = out.parent / f"{out.name}.timing.json"
    if timing.exists() and (out / "checkpoints" / "best.pt").exists():
        run, seconds = recscale.load_run(out, "cpu"), json.loads(timing.read_text())["seconds"]
    else:
        extra = {"warm_start": str(warm)} if warm is not None else {}
        started = time.perf_counter()
        run = recscale.train(data, "neumf", out, device="cpu", progress=False, epochs=epochs, overwrite=True, **extra)
        seconds = time.perf_counter() - started
        timing.write_text(json.dumps({"seconds": seconds, "epochs": epochs}))
    return run, seconds, run.evaluate("test", write=False)


def shown(metrics: dict, name: str) -> str:
    return f"{metrics[name]:.4f} ± {metrics['ci95'][name]:.4f}"


def loop(label: str, raw, root: Path, args) -> tuple[list[list], tuple]:
    datasets = windows(raw, root, QUANTILES[-(args.windows + 2):])
    rows = []
    first, _, _ = timed_train(datasets[0], root / "scratch0", args.epochs, None)
    previous, last = first.path, None
    for k, data in enumerate(datasets[1:], start=1):
        scratch, scratch_s, scratch_m = timed_train(data, root / f"scratch{k}", args.epochs, None)
        warm, warm_s, warm_m = timed_train(data, root / f"warm{k}", args.warm_epochs, previous)
        # reached: no worse than the scratch run's interval allows (better counts as reached)
        within = all(warm_m[m] >= scratch_m[m] - scratch_m["ci95"][m] for m in METRICS)
        new_users = data.n_users - datasets[k - 1].n_users
        new_items = data.n_items - datasets[k - 1].n_items
        rows.append([label, k, f"{data.n_users:,} (+{new_users:,})", f"{data.n_items:,} (+{new_items:,})",
                     scratch_m["users"], *[shown(scratch_m, m) for m in METRICS], f"{scratch_s:.1f}",
                     *[shown(warm_m, m) for m in METRICS], f"{warm_s:.1f}", f"{warm_s / scratch_s:.2f}",
                     "yes" if within else "no"])
        print(rows[-1], flush=True)
        previous, last = warm.path, (scratch, warm, data)
    return rows, last


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def point(link: Path, target: Path) -> None:
    temporary = link.with_name(link.name + ".new")
    if temporary.is_symlink():
        temporary.unlink()
    temporary.symlink_to(target.resolve())
    os.replace(temporary, link)


async def load_with_swaps(base: str, histories: list[list], bundles: list[Path], link: Path, requests: int,
                          swaps: int, concurrency: int = 16) -> dict:
    """`requests` fold-in requests from `concurrency` clients; `swaps` admin swaps spread over them."""
    import httpx
    latencies, failures, done, swapped = [], [], 0, 0
    swap_every = requests // (swaps + 1)

    async def client(c: int, http: httpx.AsyncClient):
        nonlocal done
        for n in range(c, requests, concurrency):
            started = time.perf_counter()
            try:
                answer = await http.post("/recommend", json={"items": histories[n % len(histories)], "k": 10})
                if answer.status_code != 200:
                    failures.append(answer.status_code)
                else:
                    latencies.append(time.perf_counter() - started)
            except httpx.HTTPError as exc:
                failures.append(type(exc).__name__)
            done += 1

    async def swapper(http: httpx.AsyncClient):
        nonlocal swapped
        for s in range(swaps):
            while done < (s + 1) * swap_every:
                await asyncio.sleep(0.01)
            point(link, bundles[(s + 1) % len(bundles)])
            answer = await http.post("/admin/reload", headers={"X-Admin-Token": TOKEN}, timeout=120)
            swapped += answer.status_code == 200 and answer.json()["swapped"]

    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(c, http) for c in range(concurrency)), swapper(http))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"requests": requests, "answered": len(latencies), "lost": len(failures), "failures": failures[:5],
            "swaps": swapped, "p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)),
            "per_s": requests / wall}


def serve_and_swap(scratch, warm, data, root: Path, args) -> dict:
    import httpx

    from recscale.export import export_run
    bundles = []
    for run in (warm, scratch):
        out = root / f"bundle-{run.path.name}"
        if not (out / "manifest.json").exists():
            export_run(run.path, out, formats=("onnx",))
        bundles.append(out)
    link = root / "serving"
    point(link, bundles[0])
    rows = data.rows("train", "valid")
    rng = np.random.default_rng(0)
    picked = rng.choice(np.flatnonzero(np.diff(rows.indptr) > 0), 200, replace=False)
    item_ids = data.original_item_ids()
    histories = [item_ids[rows[u].indices].tolist() for u in picked]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "recscale", "serve", "--bundle", str(link), "--port", str(port),
                               "--admin-token-env", "RECSCALE_BENCH_ADMIN"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "RECSCALE_BENCH_ADMIN": TOKEN})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit(f"server did not start: {server.stderr.read()[-2000:]}")
                time.sleep(0.3)
        result = asyncio.run(load_with_swaps(base, histories, bundles, link, args.requests, args.swaps))
        result["median_history"] = int(np.median([len(h) for h in histories]))
        return result
    finally:
        server.terminate()
        server.wait(60)


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of a from-scratch run")
    parser.add_argument("--warm-epochs", type=int, default=3, help="epochs of a warm-started run")
    parser.add_argument("--windows", type=int, default=3, help="windows after the first (at most 3)")
    parser.add_argument("--synthetic", default="4000,1500,150000", help="users,items,interactions of the arriving log")
    parser.add_argument("--requests", type=int, default=1600)
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--logs", default="ml,synthetic", help="which logs: ml (ml-latest-small), synthetic")
    parser.add_argument("--work", help="folder for the windows' data and runs [default: a fresh temporary folder]")
    args = parser.parse_args()
    args.windows = max(1, min(args.windows, len(QUANTILES) - 2))
    from recscale.data.ingest.sources import load_dataset
    work = Path(args.work) if args.work else workdir("incremental")
    users, items, interactions = (int(x) for x in args.synthetic.split(","))
    logs = args.logs.split(",")
    rows = loop("ml-latest-small", load_dataset("ml-latest-small"), work / "ml", args)[0] if "ml" in logs else []
    more, last = loop("arriving synthetic", arriving_log(users, items, interactions), work / "synth", args)
    rows += more
    served = serve_and_swap(*last, work / "synth", args)
    print(served, flush=True)
    header = ["log", "window", "users", "items", "test users", *[f"scratch {m}" for m in METRICS], "scratch s",
              *[f"warm {m}" for m in METRICS], "warm s", "warm / scratch time", "warm reaches scratch"]
    body = f"""## The daily loop: warm start and hot swap (`benchmarks/incremental.py`)

{machine()}.

Each log cut by time at its quantiles {', '.join(str(q) for q in QUANTILES[-(args.windows + 2):])}; window k = the log
up to the next quantile, prepared under `temporal` (test = the next window) with `--extend` from
window k-1. NeuMF (default settings) from scratch for {args.epochs} epochs against NeuMF warm-started from
the previous window's warm run for {args.warm_epochs} epochs. Test metrics: full ranking, mean ± 95% interval;
"reaches scratch" when neither metric of the warm run lies below the scratch run's interval. Times
are the whole `recscale.train` call (validation each epoch included). The arriving synthetic log:
{users:,} users, {items:,} items, {interactions:,} interactions, users and items arriving over time.

{table(header, rows)}

Hot swap under load: the last window's warm and scratch runs exported and served (one worker,
ONNX Runtime), {served['requests']:,} `/recommend` requests of new users (histories of
{served['median_history']} items at the median, folded in by the server) at concurrency 16 while the bundle was
swapped {served['swaps']} times through `/admin/reload`: {served['answered']:,} answered, **{served['lost']} lost**;
fold-in request latency p50 {served['p50']:.1f} ms, p99 {served['p99']:.1f} ms ({served['per_s']:.0f} requests/s).
Fold-in quality against trained vectors and popularity: see "Fold-in of pairwise models".
"""
    publish(args, "incremental", body)


if __name__ == "__main__":
    main()

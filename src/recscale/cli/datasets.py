"""`recscale datasets` (list, download, synthesize) and `recscale demo` (the whole pipeline on the
embedded MovieLens data)."""

from __future__ import annotations

import time
from pathlib import Path

from recscale import api
from recscale.cli.parsing import add_format_argument
from recscale.config.arguments import add_arguments
from recscale.config.layers import build, flags
from recscale.data.dataset.schema import dataset_notes
from recscale.data.ingest.download import cache_root, dataset_dir, ensure_dataset, parse_checksums
from recscale.data.ingest.sources import REMOTES
from recscale.data.ingest.synth import SynthSpec, synthesize, write_movielens_layout
from recscale.errors import RecscaleError
from recscale.evaluation.report import format_table


def add_datasets(sub) -> None:
    p = sub.add_parser("datasets", help="list, download or synthesize datasets")
    p.add_argument("action", nargs="?", choices=["list", "download", "synth"], help="[default: list]")
    p.add_argument("name", nargs="?", help="download: the dataset's name")
    p.add_argument("--sha256", action="append", metavar="FILE=HEX", help="download: your own SHA-256 of an "
                   "archive (FILE: its file name), checked before use; replaces a checksum recorded on first use")
    add_arguments(p, SynthSpec, skip=("in_cluster", "item_exponent", "activity_exponent", "min_per_user"))
    p.add_argument("--out", help="synth: directory to write ratings.csv and movies.csv into")
    p.add_argument("--overwrite", action="store_true", help="synth: replace ratings.csv and movies.csv in --out")


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on the embedded MovieLens data")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quick", action="store_true", help="2 epochs per neural model (a smoke run)")
    add_format_argument(p)


def cmd_datasets(args) -> int:
    action = args.action or "list"
    if action == "list":
        print(f"{'name':18s} {'format':15s} {'checksum':30s} {'cached':7s} source")
        print(f"{'ml-latest-small':18s} {'movielens-csv':15s} {'embedded':30s} {'yes':7s} inside the package")
        for name, remote in REMOTES.items():
            pinned = next(iter(remote.checksums.values()), None)
            check = (f"{pinned[0]} (publisher)" if pinned else
                     "-" if not remote.urls else "sha256 on first use (TOFU)")
            cached = "yes" if dataset_dir(remote).is_dir() else "no"
            print(f"{name:18s} {remote.format:15s} {check:30s} {cached:7s} "
                  f"{remote.urls[0] if remote.urls else remote.note}")
        print(f"cache: {cache_root()} (set RECSCALE_HOME to move it); TOFU: the SHA-256 of the first copy is "
              f"recorded and later copies must match; pass --sha256 FILE=HEX to pin your own")
        return 0
    if action == "download":
        if not args.name:
            raise RecscaleError("datasets download: name a dataset (see `recscale datasets list`)")
        if args.name not in REMOTES or not REMOTES[args.name].urls:
            raise RecscaleError(f"datasets download: {args.name!r} is not downloadable (see `recscale datasets list`)")
        print(f"{args.name}: {ensure_dataset(REMOTES[args.name], checksums=parse_checksums(args.sha256))}")
        return 0
    if not args.out:
        raise RecscaleError("datasets synth: --out DIR is required")
    spec = build(SynthSpec, flags({k: getattr(args, k) for k in ("users", "items", "interactions", "seed", "clusters")}))
    started = time.perf_counter()
    write_movielens_layout(synthesize(spec).raw, args.out, overwrite=args.overwrite)
    print(f"wrote {spec.interactions:,} interactions ({spec.users:,} users x {spec.items:,} items) in "
          f"{time.perf_counter() - started:.1f}s -> {args.out}/ratings.csv, movies.csv")
    return 0


DEMO_MODELS = {"ncf": ["popularity", "neumf"], "vae": ["popularity", "ease", "multvae"]}
DEMO_KS = {"ncf": (10, 20), "vae": (20, 50, 100)}


def cmd_demo(args) -> int:
    """prepare -> fit -> evaluate -> recommend on the embedded MovieLens ml-latest-small."""
    out = Path(args.out)
    for protocol, models in DEMO_MODELS.items():
        data = api.prepare("ml-latest-small", out / f"ml-latest-small-{protocol}", protocol, seed=args.seed,
                           overwrite=True)
        counts = data.meta["counts"]
        print(f"[prepare] {protocol}: {counts['users']} users, {counts['items']} items -> {data.root}", flush=True)
        rows = {}
        for name in models:
            run_dir = out / f"{name}-{protocol}"
            quick = {"epochs": 2} if args.quick else {}
            print(f"[train] {name} on the {protocol} split ...", flush=True)
            started = time.perf_counter()
            run = api.train(data, name, run_dir, overwrite=True, seed=args.seed, device=args.device, **quick)
            rows[f"{name} (test)"] = run.evaluate("test")
            n = run.write_recommendations(run_dir / "recs.tsv", k=10)
            print(f"[train] {name} ({time.perf_counter() - started:.0f}s): run -> {run_dir}; metrics -> "
                  f"{run_dir / 'eval-test.json'}; top-10 recommendations ({n} rows) -> {run_dir / 'recs.tsv'}",
                  flush=True)
        print(f"\nTest metrics, {protocol} protocol "
              f"({'100 sampled negatives' if protocol == 'ncf' else 'full ranking, fold-in users'}; "
              f"± is the 95% interval over users):")
        print(format_table(rows, DEMO_KS[protocol], protocol, args.report_format) + "\n", flush=True)
        for note in dataset_notes(data.meta):
            print(f"note: {note}\n", flush=True)
    return 0



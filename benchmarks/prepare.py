"""`recscale prepare` at ml-20m scale: 20M interactions, 138,493 users x 26,744 items.

    python benchmarks/prepare.py              # about 5 minutes on 2 cores
    python benchmarks/prepare.py --interactions 1000000 --no-write   # a smoke run

A synthetic log of ml-20m's shape is written once as MovieLens ratings.csv + movies.csv (the raw
layout), then each protocol is prepared in a fresh process, from reading the CSV to the renamed
output directory, as `recscale prepare --ratings ... --movies ...` does. Reported: wall time
(median of --repeats) and the process's peak resident memory (VmHWM). Goal: under 60 s and 4 GiB
for ncf and vae on a 2-core machine.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402

CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
from common import peak_rss_mib
from recscale.cli import main
start = time.perf_counter()
code = main(["prepare", "--ratings", {ratings!r}, "--movies", {movies!r}, "--protocol", {protocol!r},
             "--out", {out!r}, "--overwrite"])
print(json.dumps({{"code": code, "seconds": time.perf_counter() - start, "peak_mib": peak_rss_mib()}}))
"""


def run_child(raw: Path, protocol: str, out: Path) -> dict:
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), ratings=str(raw / "ratings.csv"),
                        movies=str(raw / "movies.csv"), protocol=protocol, out=str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    record = json.loads(result.stdout.strip().splitlines()[-1])
    if record["code"] != 0:
        raise SystemExit(f"prepare failed: {result.stderr}")
    return record


def main() -> None:
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--users", type=int, default=138_493)
    parser.add_argument("--items", type=int, default=26_744)
    parser.add_argument("--interactions", type=int, default=20_000_000)
    parser.add_argument("--protocols", default="ncf,vae,random")
    args = parser.parse_args()
    from recscale.data.ingest.synth import SynthSpec, synthesize, write_movielens_layout

    work = Path(tempfile.mkdtemp(prefix="recscale-prepare-"))
    start = time.perf_counter()
    write_movielens_layout(synthesize(SynthSpec(args.users, args.items, args.interactions, seed=0)).raw, work / "raw")
    size = (work / "raw" / "ratings.csv").stat().st_size
    print(f"wrote {args.interactions:,} interactions ({size / 2**20:,.0f} MiB CSV) in "
          f"{time.perf_counter() - start:.0f}s", flush=True)
    rows = []
    for protocol in args.protocols.split(","):
        records = [run_child(work / "raw", protocol, work / f"out-{protocol}") for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in records)
        peak = max(r["peak_mib"] for r in records)
        meta = json.loads((work / f"out-{protocol}" / "meta.json").read_text())
        runs = ", ".join(f"{r['seconds']:.1f}" for r in records)
        print(f"{protocol}: {seconds:.1f}s (runs {runs}), peak {peak:,.0f} MiB", flush=True)
        rows.append([protocol, f"{seconds:.1f}", runs,
                     f"{peak:,.0f}", f"{meta['counts']['train']:,}"])
    body = (f"Synthetic log of ml-20m's shape ({args.users:,} users x {args.items:,} items, "
            f"{args.interactions:,} interactions; ratings.csv {size / 2**20:,.0f} MiB), prepared from the CSV "
            f"files in a fresh process per run (`recscale prepare --ratings ratings.csv --movies movies.csv "
            f"--protocol P`). Median of {args.repeats} runs.\n\n"
            + table(["protocol", "wall s (median)", "runs", "peak RSS MiB", "training rows"], rows)
            + f"\n\nGoal: under 60 s and 4 GiB for ncf and vae. Machine: {machine()}. "
            f"Command: `python benchmarks/prepare.py`.")
    publish(args, "prepare", "## Prepare at ml-20m scale (`benchmarks/prepare.py`)\n\n" + body)


if __name__ == "__main__":
    main()

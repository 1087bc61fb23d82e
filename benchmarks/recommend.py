"""`recscale recommend --all` on the embedded data: scored pairs/s and peak memory, against evaluate.

    python benchmarks/recommend.py              # about 3 minutes on 2 cores
    python benchmarks/recommend.py --no-write   # print the section only

NeuMF (its defaults; 1 epoch, since speed does not depend on training), Mult-VAE (2 epochs) and
EASE (closed form) are trained once on the embedded ml-latest-small (`ncf` for NeuMF, `vae` for
the other two). Then, in a fresh process per measurement, `recommend --all --k 10` writes every
user's top 10 unseen items (the same code as the command: `Run.write_recommendations`); in
fresh processes of their own, the test split is evaluated (`Run.evaluate`). Reported: the median wall time of `--repeats` processes,
scored pairs/s (users x items / seconds; every item is scored for every user), users/s of
recommend and of evaluate, and the process's peak resident memory (VmHWM, model and data
included). Goals (issue 33): NeuMF >= 1M scored pairs/s on 2 cores and < 1 GiB; Mult-VAE and EASE
recommend at least as fast (users/s) as evaluate.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, prepared, publish, table, workdir  # noqa: E402

PLAN = [("neumf", "ncf", {"epochs": 1}), ("multvae", "vae", {"epochs": 2}), ("ease", "vae", {})]

CHILD = """
import json, sys, time
sys.path.insert(0, {bench!r})
from common import peak_rss_mib
import recscale
run = recscale.load_run({run!r}, "cpu")
run.loaded  # the checkpoint and the dataset read before the clock starts
started = time.perf_counter()
if {what!r} == "recommend":
    users = run.write_recommendations({out!r}, None, 10, True) // 10
else:
    users = run.evaluate("test", write=False)["users"]
print(json.dumps({{"seconds": time.perf_counter() - started, "users": users, "peak_mib": peak_rss_mib()}}))
"""


def measure(run: Path, what: str, out: Path) -> dict:
    """`what` (recommend or evaluate) in a fresh process: nothing warmed by the other."""
    code = CHILD.format(bench=str(Path(__file__).resolve().parent), run=str(run), what=what, out=str(out))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{what} failed: {result.stderr.strip().splitlines()[-1]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    args = arguments(__doc__, repeats=3).parse_args()
    import recscale
    from recscale.data.ingest.sources import load_dataset

    work = workdir("recommend")
    raw = load_dataset("ml-latest-small")
    rows = []
    for model, protocol, settings in PLAN:
        data = recscale.open_dataset(prepared(raw, work / protocol, protocol=protocol))
        run = recscale.train(data, model, work / f"run-{model}", device="cpu", progress=False, **settings)
        recommends = [measure(run.path, "recommend", work / f"recs-{model}.parquet") for _ in range(args.repeats)]
        evaluates = [measure(run.path, "evaluate", work / "unused") for _ in range(args.repeats)]
        seconds = statistics.median(r["seconds"] for r in recommends)
        evaluate = statistics.median(r["seconds"] for r in evaluates)
        peak = max(r["peak_mib"] for r in recommends)
        users, items = data.n_users, data.n_items
        print(f"{model}: recommend {seconds:.2f}s ({users * items / seconds:,.0f} pairs/s), evaluate "
              f"{evaluate:.2f}s, peak {peak:,.0f} MiB", flush=True)
        rows.append([model, f"{users:,} x {items:,}", f"{seconds:.2f}", f"{users * items / seconds:,.0f}",
                     f"{users / seconds:,.0f}", f"{evaluates[0]['users'] / evaluate:,.0f}", f"{peak:,.0f}"])
    body = f"""## `recommend --all` (`benchmarks/recommend.py`)

{machine()}.

Every user's top 10 unseen items of the embedded ml-latest-small (NeuMF on its `ncf` split,
Mult-VAE and EASE on `vae`), written to Parquet by `Run.write_recommendations` (what `recscale
recommend --all` runs), in a fresh process each time; median of {args.repeats}. Scored pairs: users x
items (each model scores the whole catalog for every user before masking what the user has
seen). Evaluate: the test split (`Run.evaluate`), also in fresh processes, for comparison (its
users/s count the evaluated users; under `vae` the held-out test users). Peak: the process's resident memory (model,
data and Python included). Goals: NeuMF >= 1M pairs/s and < 1 GiB; Mult-VAE and EASE recommend
at least as many users/s as evaluate.

{table(["model", "users x items", "recommend s", "scored pairs/s", "recommend users/s", "evaluate users/s",
        "peak MiB"], rows)}
"""
    publish(args, "recommend", body)


if __name__ == "__main__":
    main()

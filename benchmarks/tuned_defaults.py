"""Defaults against tuned settings, per dataset: does what recscale picks by default carry from one
dataset to the next?

    python benchmarks/tuned_defaults.py                  # about 40 minutes on 2 cores
    python benchmarks/tuned_defaults.py --trials 4 --datasets ml-latest-small --models ease

For each dataset (the embedded ml-latest-small and synthetic logs of other shapes, `SHAPES`) and
each model: one run with the model's defaults, then `recscale tune` with the model's default search
space (TPE, seed 0, median pruning, `--trials` trials, each with the model's default epochs and
early stopping). Both are selected on the validation split (the protocol's selection metric:
HR@10 under `ncf`, NDCG@100 under `vae`); the test split is scored once, at the end, for the
default run and for the best trial. The table says where tuning moved the metric and which
settings it chose; BENCHMARKS.md's "Tuned defaults" section reads it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recscale  # noqa: E402
from common import arguments, machine, publish, table  # noqa: E402
from recscale.data.ingest.synth import SynthSpec, synthesize  # noqa: E402
from recscale.training.trainer import selection_metric  # noqa: E402

# name -> synthetic log (None: the embedded MovieLens ml-latest-small, 100,836 ratings)
SHAPES = {
    "ml-latest-small": None,
    "synth-dense": SynthSpec(users=1_500, items=1_000, interactions=120_000, clusters=10, seed=1),
    "synth-long-tail": SynthSpec(users=8_000, items=6_000, interactions=120_000, clusters=40, seed=2,
                                 item_exponent=1.2, activity_exponent=1.2),
}
PROTOCOL = {"neumf": "ncf", "multvae": "vae", "multdae": "vae", "ease": "vae"}


def prepared(name: str, protocol: str, work: Path) -> Path:
    out = work / f"{name}-{protocol}"
    if not out.exists():
        spec = SHAPES[name]
        source = "ml-latest-small" if spec is None else synthesize(spec).raw
        with contextlib.redirect_stderr(io.StringIO()):
            recscale.prepare(source, out, protocol, seed=0)
    return out


def test_metric(run_dir: Path, metric: str) -> float:
    ks = (int(metric.split("@")[1]),)
    return float(recscale.load_run(run_dir, "cpu").evaluate("test", ks=ks, write=False)[metric])


def default_run(data_dir: Path, model: str, out: Path, metric: str) -> dict:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        run = recscale.train(data_dir, model, out, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    return {"valid": float(run.best[metric]), "test": test_metric(out, metric), "seconds": seconds}


def tuned_run(data_dir: Path, model: str, out: Path, metric: str, trials: int) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "recscale", "tune", "--data", str(data_dir), "--model", model,
                           "--trials", str(trials), "--device", "cpu", "--no-progress", "--out", str(out)],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"tune {model} on {data_dir} failed:\n{done.stderr[-2000:]}")
    seconds = time.perf_counter() - start
    with open(out / "trials.tsv") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    complete = [r for r in rows if r["state"] == "COMPLETE"]
    best = max(complete, key=lambda r: float(r["value"]))
    params = {k: v for k, v in best.items() if k not in ("trial", "state", "value", "epochs", "seconds")}
    run_dir = out / "trials" / f"{int(best['trial']):04d}"
    return {"valid": float(best["value"]), "test": test_metric(run_dir, metric), "seconds": seconds,
            "params": params, "pruned": sum(r["state"] == "PRUNED" for r in rows), "trials": len(rows)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--datasets", default=",".join(SHAPES))
    parser.add_argument("--models", default="neumf,multvae,ease")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--from-results", help="only write the table from an earlier run's results.json")
    args = parser.parse_args()
    if args.from_results:
        return report(json.loads(Path(args.from_results).read_text()), args)
    work = Path(tempfile.mkdtemp())
    results = []
    for name in args.datasets.split(","):
        for model in args.models.split(","):
            protocol = PROTOCOL[model]
            data_dir = prepared(name, protocol, work)
            metric = selection_metric(protocol)
            default = default_run(data_dir, model, work / f"default-{name}-{model}", metric)
            tuned = tuned_run(data_dir, model, work / f"tune-{name}-{model}", metric, args.trials)
            results.append({"dataset": name, "model": model, "metric": metric, "default": default, "tuned": tuned})
            print(json.dumps(results[-1]), flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"raw results: {work / 'results.json'}")
    report(results, args)


def setting(value: str) -> str:
    """A tuned value as people read it: floats to 3 significant digits."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() and "." not in value else f"{number:.3g}"


def report(results: list[dict], args) -> None:
    rows = [[r["dataset"], r["model"], r["metric"], f"{r['default']['valid']:.4f}", f"{r['tuned']['valid']:.4f}",
             f"{r['default']['test']:.4f}", f"{r['tuned']['test']:.4f}",
             f"{r['tuned']['trials']} ({r['tuned']['pruned']} pruned), {r['tuned']['seconds']:.0f} s",
             ", ".join(f"{k}={setting(v)}" for k, v in r["tuned"]["params"].items())] for r in results]
    better = sum(r["tuned"]["test"] > r["default"]["test"] for r in results)
    better_valid = sum(r["tuned"]["valid"] > r["default"]["valid"] for r in results)
    shapes = "; ".join(f"{name}: {spec.users:,} users x {spec.items:,} items, {spec.interactions:,} interactions, "
                       f"{spec.clusters} clusters, item exponent {spec.item_exponent}, activity exponent "
                       f"{spec.activity_exponent}" for name, spec in SHAPES.items() if spec is not None)
    body = f"""## Tuned against default settings, per dataset (`benchmarks/tuned_defaults.py`)

{machine()}. Each model once with its defaults, then `recscale tune` with its default space
({args.trials} trials, TPE seed 0, median pruning); both selected on validation, test scored once at the end.
Synthetic shapes (`recscale.data.synth`, split seed 0): {shapes}.

{table(["data", "model", "metric", "default valid", "tuned valid", "default test", "tuned test", "trials",
        "best trial's settings"], rows)}

The best trial beat the defaults on validation in {better_valid} of {len(results)} cases and on test in {better} of {len(results)}.
"""
    publish(args, "tuned-defaults", body)


if __name__ == "__main__":
    main()

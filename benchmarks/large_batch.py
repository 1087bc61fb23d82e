"""The NCF large-batch experiment, reproduced on a synthetic ml-20m-like log.

    python benchmarks/large_batch.py                 # 5M interactions, about 45 minutes on 2 cores
    python benchmarks/large_batch.py --interactions 300000 --epochs 3 --no-write   # a smoke run

NeuMF (a small tower, so that the CPU finishes) trained with Adam at the base batch, then at 16x
and 64x that batch: with the base rate; with the linear scaling rule; with scaling and an
exponential warmup over the first epoch; and with LARS (+ warmup). For each: validation HR@10 and
NDCG@10 (best epoch), the first epoch that reaches 97% of the base run's best HR@10, and the
training time. Writes a table to BENCHMARKS.md and the curves to benchmarks/large_batch.png.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, arguments, machine, publish, table  # noqa: E402
from recscale.config.prepare import PrepareConfig  # noqa: E402
from recscale.data.ingest.synth import SynthSpec, synthesize  # noqa: E402
from recscale.data.prepare.memory import prepare  # noqa: E402
from recscale.training.build import resolve_run_config  # noqa: E402
from recscale.training.run import start_run  # noqa: E402

BASE_BATCH = 4096
BASE_LR = 0.001
MODEL = {"factors": 16, "layers": [64, 32, 16]}
TARGET_FRACTION = 0.97
LARS_LR = 0.05  # at 16x the base batch; chosen by --lars-lr/--lars-eta sweeps on a smaller log
LARS_ETA = 0.5


def configs(base: int, lr: float, lars_lr: float, lars_eta: float) -> list[tuple[str, dict]]:
    adam = {"optimizer": "adam", "lr": lr}
    scaled = {**adam, "lr_scaling": "linear", "base_batch_size": base}
    warm = {"warmup": "exponential", "warmup_epochs": 1.0}
    lars = {"optimizer": "lars", "lr": lars_lr, "momentum": 0.9, "weight_decay": 1e-6, "lars_eta": lars_eta,
            "lr_scaling": "linear", "base_batch_size": base * 16}
    return [
        ("base", {"batch_size": base, **adam}),
        ("x16, same lr", {"batch_size": base * 16, **adam}),
        ("x16, linear scaling", {"batch_size": base * 16, **scaled}),
        ("x16, scaling + warmup", {"batch_size": base * 16, **scaled, **warm}),
        ("x16, LARS + warmup", {"batch_size": base * 16, **lars, **warm}),
        ("x64, same lr", {"batch_size": base * 64, **adam}),
        ("x64, scaling + warmup", {"batch_size": base * 64, **scaled, **warm}),
        ("x64, LARS + warmup", {"batch_size": base * 64, **lars, **warm}),
    ]


def run(data_dir: Path, name: str, settings: dict, epochs: int, out: Path) -> list[dict]:
    cfg = resolve_run_config({"data": str(data_dir), "model": "neumf", "epochs": epochs, "device": "cpu",
                              "progress": False, "patience": epochs, "ks": [10], **settings},
                             source=name)
    with contextlib.redirect_stderr(io.StringIO()):
        start_run(cfg, {**MODEL, "embedding_gradients": "dense"}, out)
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def plot(curves: dict[str, list[dict]], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, records in curves.items():
        ax.plot([r["epoch"] + 1 for r in records], [r["hr@10"] for r in records], marker="o", label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation HR@10")
    ax.set_title("NeuMF, large batches (synthetic ml-20m-like log)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--interactions", type=int, default=5_000_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", help="run the base and the configs whose names contain this text")
    parser.add_argument("--lars-lr", type=float, default=LARS_LR, help="LARS rate at 16x the base batch")
    parser.add_argument("--lars-eta", type=float, default=LARS_ETA, help="LARS trust coefficient")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="recscale-large-batch-"))
    spec = SynthSpec(args.users, args.items, args.interactions, seed=0)
    started = time.perf_counter()
    prepare(synthesize(spec).raw, PrepareConfig(protocol="ncf", seed=0), work / "data")
    print(f"prepared {args.interactions:,} interactions in {time.perf_counter() - started:.0f}s", flush=True)

    chosen = [c for i, c in enumerate(configs(BASE_BATCH, BASE_LR, args.lars_lr, args.lars_eta))
              if i == 0 or not args.only or args.only in c[0]]
    curves, seconds = {}, {}
    for i, (name, settings) in enumerate(chosen):
        start = time.perf_counter()
        curves[name] = run(work / "data", name, settings, args.epochs, work / f"run{i}")
        seconds[name] = time.perf_counter() - start
        best = max(curves[name], key=lambda r: r["hr@10"])
        print(f"{name}: best HR@10 {best['hr@10']:.4f} (epoch {best['epoch'] + 1}), {seconds[name]:.0f}s", flush=True)

    reference = max(r["hr@10"] for r in curves[chosen[0][0]])
    target = TARGET_FRACTION * reference
    rows = []
    for name, settings in chosen:
        records = curves[name]
        best = max(records, key=lambda r: r["hr@10"])
        reached = next((r["epoch"] + 1 for r in records if r["hr@10"] >= target), None)
        train_s = sum(r["train_seconds"] for r in records)
        rows.append([name, f"{settings['batch_size']:,}", settings["optimizer"], f"{records[0]['lr']:.4g}"
                     if settings.get("warmup") is None else f"{records[-1]['lr']:.4g}",
                     f"{best['hr@10']:.4f}", f"{best['ndcg@10']:.4f}", reached or f"> {args.epochs}",
                     f"{train_s / len(records):.1f}", f"{records[-1]['samples_per_second']:,.0f}"])
    body = (f"Synthetic log ({args.users:,} users x {args.items:,} items, {args.interactions:,} interactions, "
            f"20 clusters; `ncf` protocol, 4 negatives); NeuMF factors {MODEL['factors']}, tower "
            f"{MODEL['layers']}; {args.epochs} epochs each; target = {TARGET_FRACTION:.0%} of the base run's "
            f"best HR@10 ({target:.4f}). Validation split, 100 sampled negatives.\n\n"
            + table(["run", "batch", "optimizer", "peak lr", "best HR@10", "best NDCG@10", "epochs to target",
                     "s / epoch", "samples/s"], rows)
            + f"\n\n![HR@10 per epoch](benchmarks/large_batch.png)\n\nMachine: {machine()}. "
            f"Command: `python benchmarks/large_batch.py`.")
    if not args.no_write:
        plot(curves, ROOT / "benchmarks" / "large_batch.png")
    publish(args, "large-batch", "## Large-batch training, NeuMF (`benchmarks/large_batch.py`)\n\n" + body)


if __name__ == "__main__":
    main()

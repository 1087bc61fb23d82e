"""Training throughput on a GPU: NeuMF samples/s and Mult-VAE users/s per precision.

    python benchmarks/gpu.py                     # on a GPU: ml-20m's shape, batch 1,048,576
    python benchmarks/gpu.py --small --no-write  # anywhere, in seconds (the test suite runs this on CPU)

A synthetic log of ml-20m's shape (138,493 users x 26,744 items, 20M interactions) is prepared
under `ncf` (4 negatives per positive, so about 100M training samples per epoch) and `vae`. Each
(model, precision) is timed by `recscale benchmark`'s code path: the first epoch is dropped, the
mean of the rest reported. fp32 runs with TF32 matmuls on GPUs that have them. Pair and row batches
are built on the GPU (PairLoader/UserRowLoader with device=cuda): no host work per step.
Reference points (NVIDIA DeepLearningExamples): NCF 34M samples/s on an A100 with AMP, 22M on a
V100; VAE-CF 219k users/s on a V100.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402
from recscale.bench import benchmark  # noqa: E402
from recscale.config.prepare import PrepareConfig  # noqa: E402
from recscale.data.ingest.synth import SynthSpec, synthesize  # noqa: E402
from recscale.data.prepare.memory import prepare  # noqa: E402
from recscale.training.build import resolve_run_config  # noqa: E402

FULL = {"users": 138_493, "items": 26_744, "interactions": 20_000_000, "ncf_batch": 1_048_576,
        "vae_batch": 4096, "epochs": 3}
SMALL = {"users": 200, "items": 150, "interactions": 1_500, "ncf_batch": 1024, "vae_batch": 64, "epochs": 2}
PLAN = [("neumf", "ncf", "ncf_batch"), ("multvae", "vae", "vae_batch")]
PRECISIONS = ("fp32", "bf16", "fp16")


def measure(data_dir: Path, model: str, batch: int, precision: str, epochs: int, device: str) -> dict:
    cfg = resolve_run_config({"data": str(data_dir), "model": model, "batch_size": batch, "epochs": epochs,
                              "precision": precision, "device": device, "progress": False}, source="gpu.py")
    with contextlib.redirect_stderr(io.StringIO()):
        return benchmark(cfg, {}, untimed_epochs=1)


def run_plan(work: Path, sizes: dict, device: str) -> list[dict]:
    started = time.perf_counter()
    raw = synthesize(SynthSpec(sizes["users"], sizes["items"], sizes["interactions"], seed=0)).raw
    for protocol in ("ncf", "vae"):
        prepare(raw, PrepareConfig(protocol=protocol, seed=0), work / protocol)
    print(f"prepared {sizes['interactions']:,} interactions in {time.perf_counter() - started:.0f}s", flush=True)

    results = []
    for model, protocol, batch_key in PLAN:
        for precision in PRECISIONS:
            r = measure(work / protocol, model, sizes[batch_key], precision, sizes["epochs"], device)
            results.append(r)
            print(f"{model} {precision}: {r[r['unit'] + '_per_second']:,.0f} {r['unit']}/s "
                  f"({r['epoch_seconds']:.2f}s per epoch, peak {r['peak_memory_mib']:,.0f} MiB)", flush=True)
    return results


def main(argv: list[str] | None = None) -> list[dict]:
    parser = arguments(__doc__)
    parser.add_argument("--small", action="store_true", help="small sizes (CPU smoke run)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    sizes = SMALL if args.small else FULL
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # "fp32" on a GPU means TF32 matmuls, as NVIDIA reports
        torch.backends.cudnn.allow_tf32 = True
    with tempfile.TemporaryDirectory(prefix="recscale-gpu-") as work:  # prepared data is scratch
        results = run_plan(Path(work), sizes, device)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    rows = [[r["model"], r["precision"], f"{r['batch_size']:,}", f"{r[r['unit'] + '_per_second']:,.0f} {r['unit']}/s",
             f"{r['epoch_seconds']:.2f}", f"{r['peak_memory_mib']:,.0f}"] for r in results]
    body = (f"Synthetic log of {sizes['users']:,} users x {sizes['items']:,} items, {sizes['interactions']:,} "
            f"interactions; NeuMF with 4 negatives per positive, Mult-VAE [600, 200]; device {device}.\n\n"
            + table(["model", "precision", "batch", "throughput", "s / epoch", "peak MiB"], rows)
            + f"\n\nMachine: {machine()}. Command: `python benchmarks/gpu.py`.")
    publish(args, "gpu", "## GPU throughput (`benchmarks/gpu.py`)\n\n" + body)
    return results


if __name__ == "__main__":
    main()

"""Data-parallel scaling: the same NeuMF training with 1, 2, ... worker processes (torchrun, gloo
on CPU or NCCL on GPUs), global batch fixed (strong scaling).

    python benchmarks/scaling.py --procs 1,2            # CPU here
    python benchmarks/scaling.py --procs 1,2,4,8 --device cuda   # a GPU machine

Throughput is the median samples/s of the epochs after the first (which includes start-up), read
from each run's metrics.jsonl; efficiency = throughput(N) / (N x throughput(1)).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=65_536)
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()

    from recscale.config.prepare import PrepareConfig
    from recscale.data.ingest.sources import load_dataset
    from recscale.data.prepare.memory import prepare

    work = Path(tempfile.mkdtemp())
    prepare(load_dataset("ml-latest-small"), PrepareConfig(protocol="ncf"), work / "data")
    rates = {}
    for n in [int(p) for p in args.procs.split(",")]:
        run = work / f"run{n}"
        subprocess.run([sys.executable, "-m", "recscale", "train", "--data", str(work / "data"), "--model", "neumf",
                        "--epochs", str(args.epochs), "--patience", str(args.epochs), "--batch-size", str(args.batch_size),
                        "--device", args.device, "--nproc", str(n), "--out", str(run), "-p", "embedding_gradients=dense"],
                       check=True, capture_output=True)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        rates[n] = statistics.median(r["samples_per_second"] for r in records[1:])
        print(n, rates[n], flush=True)
    rows = [[n, f"{r:,.0f}", f"{r / rates[1]:.2f}x", f"{r / (n * rates[1]):.0%}"] for n, r in rates.items()]
    body = f"""## Data-parallel scaling (`benchmarks/scaling.py`)

{machine()}. NeuMF on the embedded ml-latest-small (`ncf`), global batch {args.batch_size:,},
dense embeddings (as under DDP), device {args.device}; median samples/s of epochs 2..{args.epochs}.

{table(["processes", "samples/s", "speed-up", "efficiency"], rows)}

On a CPU the workers share the machine's cores: one process runs its intra-op threads on all of
them, while torchrun gives each worker one thread (OMP_NUM_THREADS=1), so the speed-up measures
how well each arrangement uses the same cores, net of DDP's gradient all-reduce, not added
hardware. GPU figures (NVIDIA's reference: NCF 4.9x on 8 A100s) need a multi-GPU machine; none was
available to this session.
"""
    publish(args, "scaling", body)


if __name__ == "__main__":
    main()

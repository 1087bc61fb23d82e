"""Training speed on this machine's CPU.

    python benchmarks/train_speed.py       # a few minutes

1. NeuMF steps at two shapes, ml-latest-small's (671 users x 9,066 items) and ml-20m's
   (138,493 x 26,744), batch 2,048 and 65,536: dense embeddings + Adam against sparse gradients +
   SparseAdam, and fp32 against bf16 autocast. Random batches, so only the step is timed.
   Median of `--repeats` timings of `--steps` steps each, all measured in this one process.
2. `recscale benchmark` on the embedded data: NeuMF at batch 65,536 (samples/s) and Mult-VAE with
   its defaults (epoch time, users/s), as a user would run them.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

from recscale.bench import benchmark  # noqa: E402
from recscale.config import PrepareConfig  # noqa: E402
from recscale.data.batch import PairBatch  # noqa: E402
from recscale.data.prepare import prepare  # noqa: E402
from recscale.data.sources import load_dataset  # noqa: E402
from recscale.models.base import DataShape  # noqa: E402
from recscale.models.ncf import NCFConfig, NeuMF  # noqa: E402
from recscale.optim.factory import make_optimizers  # noqa: E402
from recscale.training.build import resolve_run_config  # noqa: E402

SHAPES = {"ml-latest-small": (671, 9_066), "ml-20m": (138_493, 26_744)}


def step_rate(shape, batch: int, sparse: bool, bf16: bool, steps: int, repeats: int) -> float:
    torch.manual_seed(0)
    model = NeuMF(DataShape(*shape), NCFConfig(embedding_gradients="sparse" if sparse else "dense"))
    optimizers = make_optimizers(model, "adam", 1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(0)
    batches = [PairBatch(torch.randint(shape[0], (batch,), generator=g), torch.randint(shape[1], (batch,), generator=g),
                         torch.randint(2, (batch,), generator=g).float()) for _ in range(steps)]

    def run():
        for b in batches:
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
                loss = model(b).loss
            optimizers.zero_grad()
            loss.backward()
            optimizers.step(scaler)

    run()  # warm-up
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(steps * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()

    rows = []
    for name, shape in SHAPES.items():
        for batch in (2_048, 65_536):
            steps = args.steps * (8 if batch == 2_048 else 1)
            dense = step_rate(shape, batch, False, False, steps, args.repeats)
            sparse = step_rate(shape, batch, True, False, steps, args.repeats)
            sparse_bf16 = step_rate(shape, batch, True, True, steps, args.repeats)
            rows.append([name, f"{batch:,}", f"{dense:,.0f}", f"{sparse:,.0f} ({sparse / dense:.1f}x)",
                         f"{sparse_bf16:,.0f} ({sparse_bf16 / sparse:.2f}x)"])
            print(rows[-1], flush=True)

    work = Path(tempfile.mkdtemp())
    raw = load_dataset("ml-latest-small")
    results = []
    for protocol, model, extra in (("ncf", "neumf", {"batch_size": 65_536}), ("ncf", "neumf", {"batch_size": 65_536, "precision": "bf16"}),
                                   ("vae", "multvae", {})):
        data_dir = work / protocol
        if not data_dir.exists():
            prepare(raw, PrepareConfig(protocol=protocol), data_dir)
        cfg = resolve_run_config({"data": str(data_dir), "model": model, "device": "cpu", "epochs": 4,
                                  "progress": False, **extra}, source="benchmark")
        r = benchmark(cfg, {}, untimed_epochs=1)
        rate_key = f"{r['unit']}_per_second"
        results.append([model, r["precision"], f"{r['batch_size']:,}", f"{r['epoch_seconds']:.2f}",
                        f"{r['valid_seconds']:.2f}", f"{r[rate_key]:,.0f} {r['unit']}/s", f"{r['peak_memory_mib']:.0f}"])
        print(results[-1], flush=True)

    body = f"""## Training speed on CPU (`benchmarks/train_speed.py`)

{machine()}.

NeuMF (64 factors, MLP 256-256-128-64) training samples/s, Adam, one step = forward, backward,
update. Dense: `nn.Embedding` + Adam. Sparse: sparse embedding gradients + SparseAdam; in brackets
its ratio to dense. The default `embedding_gradients=auto` takes sparse when 2 x batch < users +
items (here: all but ml-latest-small at 65,536). bf16: sparse with `--precision bf16`
autocast; in brackets its ratio to sparse fp32 (this CPU has AVX512-BF16). Median of {args.repeats} runs.

{table(["shape", "batch", "dense fp32", "sparse fp32", "sparse bf16"], rows)}

`recscale benchmark` on the embedded data (3 timed epochs after 1 warm-up, validation each epoch):

{table(["model", "precision", "batch", "epoch s", "valid s", "throughput", "peak RSS MiB"], results)}
"""
    print(body)
    if not args.no_write:
        write_section("train-speed", body)


if __name__ == "__main__":
    main()

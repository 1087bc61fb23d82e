"""Training speed on this machine's CPU.

    python benchmarks/train_speed.py                     # parts 1 and 2, a few minutes
    python benchmarks/train_speed.py --only vae-input    # part 3, about 10 minutes

1. NeuMF steps at two shapes, ml-latest-small's (671 users x 9,066 items) and ml-20m's
   (138,493 x 26,744), batch 2,048 and 65,536: dense embeddings + Adam against sparse gradients +
   SparseAdam, and fp32 against bf16 autocast. Random batches, so only the step is timed.
   Median of `--repeats` timings of `--steps` steps each, all measured in this one process.
2. `recscale benchmark` on the embedded data: NeuMF at batch 65,536 (samples/s) and Mult-VAE with
   its defaults (epoch time, users/s), as a user would run them.
3. Mult-VAE with dense input rows against sparse input (CSR batches, first layer by embedding_bag,
   loss from the nonzeros) at ml-20m's `vae` shape (a synthetic log of 136,677 users x 20,108 items,
   10M interactions), batch 500: `--steps` real training steps (loader included) through the same
   construction path as `recscale train`, the two alternating, median of `--repeats`.
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
from recscale.config.prepare import PrepareConfig  # noqa: E402
from recscale.data.ingest.sources import load_dataset  # noqa: E402
from recscale.data.loading.batch import PairBatch  # noqa: E402
from recscale.data.prepare.memory import prepare  # noqa: E402
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


VAE_SHAPE = {"users": 136_677, "items": 20_108, "interactions": 10_000_000}  # ml-20m under the vae protocol


def vae_input_rates(data_dir: Path, steps: int, repeats: int) -> dict[bool, float]:
    """users/s of Mult-VAE training steps with sparse and dense input, alternating."""
    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.training.build import build_model, build_trainer, seeded

    data = PreparedDataset(data_dir)
    cfg = resolve_run_config({"data": str(data_dir), "model": "multvae", "device": "cpu", "progress": False,
                              "batch_size": 500}, source="benchmark")
    trainers = {}
    for sparse in (True, False):
        with seeded(0, torch.device("cpu")):
            model, _ = build_model(cfg, {"sparse_input": sparse}, data)
            trainers[sparse] = build_trainer(cfg, model, data, torch.device("cpu"))
            trainers[sparse].model.train()

    def run(trainer) -> float:
        batches = iter(trainer.batches)
        trainer.train_step(next(batches))  # warm-up
        start = time.perf_counter()
        users = 0
        for _ in range(steps):
            batch = next(batches)
            trainer.train_step(batch)
            users += len(batch)
        return users / (time.perf_counter() - start)

    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for sparse in (True, False):
            rates[sparse].append(run(trainers[sparse]))
            print(f"sparse={sparse}: {rates[sparse][-1]:,.0f} users/s", flush=True)
    return {sparse: statistics.median(r) for sparse, r in rates.items()}


def vae_input_section(steps: int, repeats: int) -> str:
    from recscale.data.ingest.synth import SynthSpec, synthesize
    work = Path(tempfile.mkdtemp())
    started = time.perf_counter()
    raw = synthesize(SynthSpec(VAE_SHAPE["users"], VAE_SHAPE["items"], VAE_SHAPE["interactions"], seed=0)).raw
    prepare(raw, PrepareConfig(protocol="vae", min_rating=0, heldout_users=10_000), work / "vae")
    print(f"prepared in {time.perf_counter() - started:.0f}s", flush=True)
    rates = vae_input_rates(work / "vae", steps, repeats)
    rows = [["dense rows", f"{rates[False]:,.0f}", "1.0x"],
            ["sparse (CSR) input", f"{rates[True]:,.0f}", f"{rates[True] / rates[False]:.2f}x"]]
    return f"""## Mult-VAE: sparse input against dense rows (`benchmarks/train_speed.py --only vae-input`)

{machine()}.

Mult-VAE I-600-200-600-I, batch 500, Adam, fp32, on a synthetic log of ml-20m's `vae` shape
({VAE_SHAPE['users']:,} users x {VAE_SHAPE['items']:,} items, {VAE_SHAPE['interactions']:,} interactions;
116,677 training users). Users/s of {steps} real training steps (batch made by the loader, forward,
backward, update) through the construction path of `recscale train`, the two inputs alternating,
median of {repeats} runs. Dense: each batch's rows made dense (B x items), normalized, dropout over every
cell, a (B x items) @ (items x 600) matmul and a dense log-softmax product. Sparse (`sparse_input`, the
default): the CSR slice of the batch, the first layer as a sum of the weight rows of each user's items
(`embedding_bag` with per-item weights), dropout over the nonzeros, and the multinomial likelihood from
the nonzeros plus one log-sum-exp per user. Same loss and gradients (tests/models/test_contract.py).

{table(["input", "users/s", "speed-up"], rows)}
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=["vae-input"], help="run only this part")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.only == "vae-input":
        body = vae_input_section(max(args.steps, 20), args.repeats)
        print(body)
        if not args.no_write:
            write_section("vae-sparse", body)
        return

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

"""Training speed on this machine's CPU.

    python benchmarks/train_speed.py                     # parts 1 and 2, a few minutes
    python benchmarks/train_speed.py --only vae-input    # part 3, about 10 minutes

1. NeuMF's `Trainer.train_step` (the step `recscale train` runs) at two shapes: the embedded
   ml-latest-small under `ncf` and a synthetic log of ml-20m's size (138,493 x 26,744, 3M
   interactions), batch 2,048 and 65,536: dense embeddings + Adam against sparse gradients +
   SparseAdam, and fp32 against bf16 autocast. Random batches built beforehand, so only the step
   is timed. Median of `--repeats` timings of `--steps` steps each, all measured in this one process.
2. `recscale benchmark` on the embedded data: NeuMF at batch 65,536 (samples/s) and Mult-VAE with
   its defaults (epoch time, users/s), as a user would run them.
3. Mult-VAE with dense input rows against sparse input (CSR batches, first layer by embedding_bag,
   loss from the nonzeros) at ml-20m's `vae` shape (a synthetic log of 136,677 users x 20,108 items,
   10M interactions), batch 500: `--steps` real training steps (loader included) through the same
   construction path as `recscale train`, the two alternating, median of `--repeats`.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    arguments,
    machine,
    median_time,
    prepared,
    publish,
    run_config,
    synthetic,
    table,
    trainer_for,
    workdir,
)
from recscale.bench import benchmark  # noqa: E402
from recscale.data.ingest.sources import load_dataset  # noqa: E402
from recscale.data.loading.batch import PairBatch  # noqa: E402

# ml-20m's shape: a synthetic log with about 22 interactions per user, so that the ncf protocol
# keeps (nearly) every user and the tables have ml-20m's sizes.
ML20M = {"users": 138_493, "items": 26_744, "interactions": 3_000_000}


def step_rate(data_dir: Path, batch: int, sparse: bool, bf16: bool, steps: int, repeats: int) -> float:
    """Samples/s of `Trainer.train_step` (the step `recscale train` runs: learning rate, autocast,
    forward with the loss, backward, optimizer step) on random pair batches built beforehand."""
    cfg = run_config(data_dir, "neumf", batch_size=batch, precision="bf16" if bf16 else "fp32")
    trainer = trainer_for(cfg, {"embedding_gradients": "sparse" if sparse else "dense"})
    g = torch.Generator().manual_seed(0)
    users, items = trainer.data.n_users, trainer.data.n_items
    batches = [PairBatch(torch.randint(users, (batch,), generator=g), torch.randint(items, (batch,), generator=g),
                         torch.randint(2, (batch,), generator=g).float()) for _ in range(steps)]

    def run():
        for b in batches:
            trainer.train_step(b)

    run()  # warm-up
    seconds, _ = median_time(run, repeats)
    return steps * batch / seconds


VAE_SHAPE = {"users": 136_677, "items": 20_108, "interactions": 10_000_000}  # ml-20m under the vae protocol


def vae_input_rates(data_dir: Path, steps: int, repeats: int) -> dict[bool, float]:
    """users/s of Mult-VAE training steps with sparse and dense input, alternating."""
    cfg = run_config(data_dir, "multvae", batch_size=500)
    trainers = {sparse: trainer_for(cfg, {"sparse_input": sparse}) for sparse in (True, False)}

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
    work = workdir("train-speed")
    started = time.perf_counter()
    raw = synthetic(VAE_SHAPE["users"], VAE_SHAPE["items"], VAE_SHAPE["interactions"])
    prepared(raw, work / "vae", protocol="vae", min_rating=0, heldout_users=10_000)
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
    parser = arguments(__doc__, repeats=3)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--only", choices=["vae-input"], help="run only this part")
    args = parser.parse_args()
    if args.only == "vae-input":
        publish(args, "vae-sparse", vae_input_section(max(args.steps, 20), args.repeats))
        return

    work = workdir("train-speed")
    raw = load_dataset("ml-latest-small")
    shapes = {"ml-latest-small": prepared(raw, work / "ncf", protocol="ncf"),
              "ml-20m": prepared(synthetic(**ML20M), work / "ml-20m", protocol="ncf")}
    rows = []
    for name, data_dir in shapes.items():
        for batch in (2_048, 65_536):
            steps = args.steps * (8 if batch == 2_048 else 1)
            dense = step_rate(data_dir, batch, False, False, steps, args.repeats)
            sparse = step_rate(data_dir, batch, True, False, steps, args.repeats)
            sparse_bf16 = step_rate(data_dir, batch, True, True, steps, args.repeats)
            rows.append([name, f"{batch:,}", f"{dense:,.0f}", f"{sparse:,.0f} ({sparse / dense:.1f}x)",
                         f"{sparse_bf16:,.0f} ({sparse_bf16 / sparse:.2f}x)"])
            print(rows[-1], flush=True)

    results = []
    for protocol, model, extra in (("ncf", "neumf", {"batch_size": 65_536}), ("ncf", "neumf", {"batch_size": 65_536, "precision": "bf16"}),
                                   ("vae", "multvae", {})):
        r = benchmark(run_config(prepared(raw, work / protocol, protocol=protocol), model, epochs=4, **extra), {},
                      untimed_epochs=1)
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
    publish(args, "train-speed", body)


if __name__ == "__main__":
    main()

"""Full-ranking evaluation over a million items, against RecBole 1.2.1's full-sort evaluation of the
same model kind on the same data and split, side by side in one run.

    python -m venv /tmp/rb && /tmp/rb/bin/pip install torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14"
    python benchmarks/catalog_scale.py --recbole-python /tmp/rb/bin/python      # about 30 minutes on 2 cores

Data: a synthetic log of --users users (100,000) and --items items (1,000,000): every item once,
then --extra (2,000,000) more interactions with power-law popularity; the `random` protocol
(80/10/10), so that every user with a test interaction is evaluated (about 100,000 of them).
Models, untrained (evaluation throughput does not depend on the weights; untrained, almost no user
has a relevant item in the top 100, the worst case for the exact full-ranking MRR, which then counts
deep into the ranking): a Mult-VAE-sized scorer (I-64-32-64-I: history in, every item out) and NeuMF (16 factors, MLP 64-32-16). EASE is not run: its item-item matrix at 1M items would
be 4 TB.

Measured, each in its own process: users/s of evaluating every test user (Mult-VAE; NeuMF on a
sample: every --neumf-step-th test user), Recall/NDCG/MRR/Hit at K = 10, 20, 50, 100, every item
ranked, known items masked; peak RSS of the process. RecBole on a sample of the test users (every
--recbole-step-th; its test file holds only them) at its default eval_batch_size (4,096: at 1M
items, one user per batch) and at 64 users per batch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, peak_rss_mib, publish, table  # noqa: E402

KS = (10, 20, 50, 100)
VAE = {"hidden": (64,), "latent": 32}
NEUMF = {"factors": 16, "layers": (64, 32, 16)}


def catalog_log(n_users: int, n_items: int, extra: int, seed: int = 0):
    import polars as pl
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    users = np.concatenate([np.arange(n_items) % n_users, rng.integers(0, n_users, extra)])
    items = np.concatenate([rng.permutation(n_items), rng.choice(n_items, extra, p=p)])
    return pl.DataFrame({"user": users, "item": items, "rating": np.full(users.size, 5.0, np.float32),
                         "timestamp": np.arange(users.size)}).unique(["user", "item"], maintain_order=True)


def ours(data_dir: str, model_name: str, step: int) -> dict:
    """Runs in its own process: evaluate every `step`-th test user with an untrained model."""
    import torch

    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.evaluation.protocols import evaluate
    from recscale.models.base import DataShape
    from recscale.models.registry import MODELS

    data = PreparedDataset(data_dir)
    cls = MODELS[model_name]
    torch.manual_seed(0)
    model = cls(DataShape(data.n_users, data.n_items), cls.Config(**(VAE if model_name == "multvae" else NEUMF)))
    before = peak_rss_mib()
    start = time.perf_counter()
    result = evaluate(model, data, "test", ks=KS, batch_size=1024, world_size=step)
    seconds = time.perf_counter() - start
    return {"users": result["users"], "seconds": seconds, "rss_before": before, "rss_peak": peak_rss_mib(),
            "ndcg@100": result["ndcg@100"]}


def theirs(root: str, model_name: str, users_per_batch: int) -> dict:
    """Runs in RecBole's interpreter: its full-sort evaluation of the exported test users."""
    import logging

    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    from recbole_compare import recbole_config

    sizes = {"mlp_hidden_size": list(VAE["hidden"]), "latent_dimension": VAE["latent"]} if model_name == "MultiVAE" \
        else {"mf_embedding_size": NEUMF["factors"], "mlp_embedding_size": NEUMF["layers"][0] // 2,
              "mlp_hidden_size": list(NEUMF["layers"][1:])}
    started = time.perf_counter()
    config = recbole_config(Path(root), model_name, "cat", "full", metrics=["Recall", "NDCG", "MRR", "Hit"],
                            topk=list(KS), **sizes)
    init_seed(config["seed"], config["reproducibility"])
    logging.disable(logging.CRITICAL)
    dataset = create_dataset(config)
    config["eval_batch_size"] = users_per_batch * dataset.item_num if users_per_batch else 4096
    _, _, test = data_preparation(config, dataset)
    net = get_model(model_name)(config, test.dataset).to("cpu")
    trainer = Trainer(config, net)
    loaded = time.perf_counter() - started
    before = peak_rss_mib()
    start = time.perf_counter()
    result = trainer.evaluate(test, load_best_model=False, show_progress=False)
    seconds = time.perf_counter() - start
    users = len(np.unique(test.dataset.inter_feat[test.dataset.uid_field].numpy()))
    return {"users": users, "seconds": seconds, "load_seconds": loaded, "rss_before": before,
            "rss_peak": peak_rss_mib(), "ndcg@100": float(result["ndcg@100"])}


def export(data_dir: Path, out: Path, step: int) -> int:
    """RecBole atomic files of the prepared split, the test file holding every `step`-th test user."""
    from recscale.data.dataset.prepared import PreparedDataset
    data = PreparedDataset(data_dir)
    users, items = data.original_user_ids(), data.original_item_ids()
    tested = np.flatnonzero(np.diff(data.rows("test").indptr))[::step]
    atomic = out / "cat"
    atomic.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        frame = data.table(split)
        if split == "test":
            frame = frame.filter(frame["user"].is_in(tested))
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        lines += [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in zip(users[frame["user"].to_numpy()], items[frame["item"].to_numpy()],
                                                             frame["rating"].to_list(), frame["timestamp"].to_list())]
        (atomic / f"cat.{split}.inter").write_text("\n".join(lines) + "\n")
    return tested.size


def child(argv: list[str], python: str = sys.executable, cwd: Path | None = None) -> dict:
    out = subprocess.run([python, str(Path(__file__).resolve()), *argv], capture_output=True, text=True, cwd=cwd)
    if out.returncode:
        raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--recbole-python", help="python of a venv with recbole==1.2.1 installed")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--extra", type=int, default=2_000_000)
    parser.add_argument("--neumf-step", type=int, default=500, help="NeuMF evaluates every N-th test user")
    parser.add_argument("--recbole-step", type=int, default=100, help="RecBole evaluates every N-th test user")
    parser.add_argument("--side", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        kind, where, what = args.side
        model, number = what.split(":")
        print(json.dumps(ours(where, model, int(number)) if kind == "ours" else theirs(where, model, int(number))))
        return
    if not args.recbole_python:
        parser.error("--recbole-python is required (see the module docstring)")

    from recscale.config.prepare import PrepareConfig
    from recscale.data.ingest.raw import RawDataset
    from recscale.data.prepare.memory import prepare

    work = Path(tempfile.mkdtemp(prefix="recscale-catalog-"))
    meta = prepare(RawDataset("synthetic", catalog_log(args.users, args.items, args.extra), None, ()),
                   PrepareConfig(protocol="random", min_rating=0), work / "data")
    export(work / "data", work / "recbole", args.recbole_step)
    runs = [("recscale", "Mult-VAE-sized", "every", child(["--side", "ours", str(work / "data"), "multvae:1"])),
            ("recscale", "Mult-VAE-sized", f"1 in {args.recbole_step}",
             child(["--side", "ours", str(work / "data"), f"multvae:{args.recbole_step}"])),
            ("recscale", "NeuMF", f"1 in {args.neumf_step}",
             child(["--side", "ours", str(work / "data"), f"neumf:{args.neumf_step}"]))]
    for label, per_batch in (("RecBole, default eval_batch_size (1 user per batch)", 0),
                             ("RecBole, 64 users per batch", 64)):
        runs.append((label, "Mult-VAE-sized", f"1 in {args.recbole_step}",
                     child(["--side", "theirs", str(work / "recbole"), f"MultiVAE:{per_batch}"],
                           args.recbole_python, work)))
        print(runs[-1], flush=True)
    rows = [[tool, model, sample, f"{r['users']:,}", f"{r['seconds']:.1f}", f"{r['users'] / r['seconds']:,.1f}",
             f"{r['rss_peak']:,.0f}"] for tool, model, sample, r in runs]
    ours_sample = runs[1][3]["users"] / runs[1][3]["seconds"]
    ratios = ", ".join(f"{ours_sample / (r['users'] / r['seconds']):.1f}x {label.split(', ')[1]}"
                       for label, _, _, r in runs[3:])
    counts = meta["counts"]
    body = f"""## Full ranking over a million items (`benchmarks/catalog_scale.py`)

{machine()}. Synthetic: {counts['items']:,} items, {counts['users']:,} users, {counts['interactions']:,}
interactions, `random` protocol; untrained models (throughput does not depend on the weights), Mult-VAE-sized
I-64-32-64-I and NeuMF 16 factors + MLP 64-32-16; Recall, NDCG, MRR and Hit at 10, 20, 50, 100 over
every item, known items masked. recscale scores the catalog in item blocks with a running top-k
(score_block_mib = 256: here 1,024 users x 4,096 items per block) and counts, in the same pass, the
items ahead of each user's best relevant one (the exact full-ranking MRR). RecBole evaluates the
sampled users only (its test file holds them); its `full_sort_predict` builds dense (users x items)
rows. On the same sample, recscale evaluates {ratios}.

{table(["tool", "model", "test users", "evaluated", "seconds", "users/s", "peak RSS MiB"], rows)}
"""
    publish(args, "catalog", body)


if __name__ == "__main__":
    main()

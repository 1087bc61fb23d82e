"""NeuMF training speed against RecBole 1.2.1, side by side, same data, same model size.

    python -m venv /tmp/rb && /tmp/rb/bin/pip install torch==2.13.0 recbole==1.2.1 "numpy<2" "pandas<2.3" "scipy<1.14"  # RecBole 1.2.1 predates NumPy 2
    python benchmarks/recbole_compare.py --recbole-python /tmp/rb/bin/python

Data: the embedded ml-latest-small under our `ncf` protocol (seed 0), exported as RecBole atomic
files with the very same train/valid/test split (RecBole's `benchmark_filename`).
Model: NeuMF with 64 GMF factors and an MLP over two 128-wide embeddings, 256-256-128-64 in both
(RecBole: mf_embedding_size=64, mlp_embedding_size=128, mlp_hidden_size=[256, 128, 64]), dropout 0,
Adam, 4 uniform negatives per positive drawn each epoch, the same batch size (rows, negatives
included, in both tools). Timed: training epochs only (negative sampling and batching included,
validation excluded), `--epochs` of them after one warm-up, on the CPU, the two tools alternating.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, machine, publish, table  # noqa: E402


def export_split(out: Path, data_dir: Path | None = None, name: str = "mls") -> Path:
    """RecBole atomic files (`out/recbole/NAME/NAME.{train,valid,test}.inter`) of a prepared dataset
    (by default: the embedded data's `ncf` split of seed 0, prepared into `out/ncf`); returns the
    prepared dataset's directory."""
    from recscale.config.prepare import PrepareConfig
    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.data.ingest.sources import load_dataset
    from recscale.data.prepare.memory import prepare

    if data_dir is None:
        data_dir = out / "ncf"
        prepare(load_dataset("ml-latest-small"), PrepareConfig(protocol="ncf", seed=0), data_dir)
    data = PreparedDataset(data_dir)
    users, items = data.original_user_ids(), data.original_item_ids()
    atomic = out / "recbole" / name
    atomic.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        frame = data.table(split)
        lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
        lines += [f"{users[u]}\t{items[i]}\t{r}\t{t}" for u, i, r, t in
                  zip(frame["user"].to_list(), frame["item"].to_list(), frame["rating"].to_list(), frame["timestamp"].to_list())]
        (atomic / f"{name}.{split}.inter").write_text("\n".join(lines) + "\n")
        if data.has(f"{split}_negatives"):  # the sampled candidates are part of the `ncf` split
            negatives = data.table(f"{split}_negatives").group_by("user", maintain_order=True).agg("item")
            by_user = {str(users[u]): [str(items[i]) for i in row] for u, row in negatives.iter_rows()}
            (atomic / f"{name}.{split}.negatives.json").write_text(json.dumps(by_user))
    return data_dir


def use_exported_negatives(loader, dataset, path: Path) -> None:
    """Make a RecBole evaluation loader rank each user's positive among the negatives stored in the
    prepared dataset instead of drawing 100 afresh at every evaluation (RecBole's uni100 redraws
    them each epoch, so its validation curve would carry sampling noise that ours does not)."""
    import copy

    import torch
    stored = json.loads(path.read_text())
    sampler = copy.copy(loader._sampler)  # the valid and test loaders may share one

    def sample_by_user_ids(user_ids, item_ids, num):
        # RecBole's layout: the j-th negative of user_ids[i] at j * len(user_ids) + i
        rows = [dataset.token2id(dataset.iid_field, stored[dataset.id2token(dataset.uid_field, u)][:num])
                for u in user_ids]
        return torch.as_tensor(rows, dtype=torch.int64).T.reshape(-1)

    sampler.sample_by_user_ids = sample_by_user_ids
    loader._sampler = sampler


def recbole_config(root: Path, model: str = "NeuMF", dataset: str = "mls", mode: str = "uni100", **overrides):
    """RecBole's Config for `model` on an exported split: RecBole's documented defaults (the model's
    yaml, overall.yaml) except for the data, the evaluation mode (`uni100`: 100 uniform negatives as
    the `ncf` protocol; `full`: every item), its metrics at 10 reported, and the CPU."""
    from recbole.config import Config
    metrics = ["Hit", "NDCG", "MRR"] + (["Recall"] if mode == "full" else [])
    return Config(model=model, dataset=dataset, config_dict={
        "data_path": str(root), "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
        "eval_args": {"mode": mode, "order": "TO", "group_by": "user"},
        "metrics": metrics, "topk": [10],
        "use_gpu": False, "device": "cpu", "show_progress": False, "seed": 0, "reproducibility": True,
        "worker": 0, "checkpoint_dir": str(root / "ckpt"), "state": "ERROR", **overrides})


def quality_recbole(root: Path, model: str = "NeuMF", dataset: str = "mls", mode: str = "uni100") -> dict:
    """Runs inside RecBole's interpreter: `model` with RecBole's defaults, trained with its own early
    stopping (on MRR@10); the validation metrics of each epoch with the wall time since fit() began
    (training and validation), and the test metrics of the best epoch."""
    import logging

    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import get_model, init_seed

    config = recbole_config(root, model, dataset, mode)
    init_seed(config["seed"], config["reproducibility"])
    logging.disable(logging.CRITICAL)
    data = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, data)
    for loader, split in ((valid_data, "valid"), (test_data, "test")):
        stored = root / dataset / f"{dataset}.{split}.negatives.json"
        if stored.exists():
            use_exported_negatives(loader, data, stored)
    net = get_model(model)(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, net)
    curve, started = [], time.perf_counter()
    original = trainer._valid_epoch
    names = {"hit@10": "hr@10", "ndcg@10": "ndcg@10", "mrr@10": "mrr@10", "recall@10": "recall_recbole@10"}

    def pick(result) -> dict:
        return {ours: float(result[theirs]) for theirs, ours in names.items() if theirs in result}

    def timed_valid(*args, **kwargs):
        score, result = original(*args, **kwargs)
        curve.append({"seconds": time.perf_counter() - started, **pick(result)})
        return score, result

    trainer._valid_epoch = timed_valid
    trainer.fit(train_data, valid_data, saved=True, show_progress=False)
    seconds = time.perf_counter() - started
    # RecBole 1.2.1's load_best_model calls torch.load with torch >= 2.6's weights_only default, which
    # refuses its pickled config: load the best epoch ourselves (our own file, just written)
    import torch
    best = torch.load(trainer.saved_model_file, map_location="cpu", weights_only=False)
    net.load_state_dict(best["state_dict"])
    net.load_other_parameter(best.get("other_parameter"))
    test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
    return {"curve": curve, "seconds": seconds, "test": pick(test)}


def run_recbole_side(python: str, side: str, root: Path, *extra: str):
    """Run this script's RecBole side in RecBole's interpreter, in a scratch working directory
    (RecBole writes log_tensorboard/ and saved/ into its working directory)."""
    out = subprocess.run([python, str(Path(__file__).resolve()), "--side", side, "--root", str(root), *extra],
                         capture_output=True, text=True, cwd=root)
    if out.returncode:
        raise SystemExit(f"RecBole side failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_recscale(data_dir: Path, batch: int, epochs: int) -> list[float]:
    import torch

    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.training.build import build_model, build_trainer, resolve_run_config, seeded

    cfg = resolve_run_config({"data": str(data_dir), "model": "neumf", "batch_size": batch, "device": "cpu",
                              "lr": 1e-3, "progress": False}, source="benchmark")
    data = PreparedDataset(data_dir)
    with seeded(0, torch.device("cpu")):
        model, _ = build_model(cfg, {}, data)
        trainer = build_trainer(cfg, model, data, torch.device("cpu"))
        trainer.logger.enabled = False
        times = []
        for _ in range(epochs + 1):
            times.append(trainer.train_epoch()["train_seconds"])
            trainer.state.epoch += 1
    return times[1:]


def time_recbole(root: Path, batch: int, epochs: int) -> list[float]:
    """Runs inside RecBole's interpreter."""
    import logging

    from recbole.data import create_dataset, data_preparation
    from recbole.model.general_recommender import NeuMF
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = recbole_config(root, train_neg_sample_args={"distribution": "uniform", "sample_num": 4, "alpha": 1.0,
                                                         "dynamic": False, "candidate_num": 0},
                            train_batch_size=batch, learning_rate=1e-3, mf_embedding_size=64, mlp_embedding_size=128,
                            mlp_hidden_size=[256, 128, 64], dropout_prob=0.0)
    init_seed(config["seed"], config["reproducibility"])
    logging.disable(logging.CRITICAL)
    dataset = create_dataset(config)
    train_data, _, _ = data_preparation(config, dataset)
    model = NeuMF(config, train_data.dataset).to(config["device"])
    trainer = Trainer(config, model)
    times = []
    for epoch in range(epochs + 1):
        start = time.perf_counter()
        trainer._train_epoch(train_data, epoch, show_progress=False)
        times.append(time.perf_counter() - start)
    return times[1:]


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--recbole-python", help="python of a venv with recbole==1.2.1 installed")
    parser.add_argument("--batch-sizes", default="2048,65536")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two tools")
    parser.add_argument("--side", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "recbole":
        print(json.dumps(time_recbole(Path(args.root), int(args.batch_sizes), args.epochs)))
        return
    if args.side == "recbole-quality":
        spec = json.loads(args.spec) if args.spec else {}
        print(json.dumps(quality_recbole(Path(args.root), **spec)))
        return
    if not args.recbole_python:
        parser.error("--recbole-python is required (see the module docstring)")

    work = Path(tempfile.mkdtemp())
    data_dir = export_split(work)
    n_train = sum(1 for _ in open(work / "recbole" / "mls" / "mls.train.inter")) - 1
    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        ours, theirs = [], []
        for _ in range(args.rounds):
            ours += time_recscale(data_dir, batch, args.epochs)
            theirs += run_recbole_side(args.recbole_python, "recbole", work / "recbole", "--batch-sizes", str(batch),
                                       "--epochs", str(args.epochs))
        ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
        samples = n_train * 5
        rows.append([f"{batch:,}", f"{theirs_s:.2f}", f"{ours_s:.2f}", f"{samples / theirs_s:,.0f}",
                     f"{samples / ours_s:,.0f}", f"{theirs_s / ours_s:.1f}x"])
        print(rows[-1], flush=True)
    body = f"""## NeuMF training speed against RecBole 1.2.1 (`benchmarks/recbole_compare.py`)

{machine()}. The embedded ml-latest-small, `ncf` split (seed 0, {n_train:,} training positives, so
{n_train * 5:,} rows per epoch with 4 negatives), the same split given to both; NeuMF 64 factors,
MLP 256-256-128-64, Adam, fp32. Median seconds per training epoch over {args.rounds} x {args.epochs}
epochs per tool (after a warm-up epoch), the tools alternating in one run.

{table(["batch", "RecBole s/epoch", "recscale s/epoch", "RecBole samples/s", "recscale samples/s", "speed-up"], rows)}
"""
    publish(args, "recbole", body)


if __name__ == "__main__":
    main()

"""Quality on the embedded MovieLens ml-latest-small, each model against popularity, with intervals.

    python benchmarks/quality.py                                   # 3 split seeds, about 15 minutes
    python benchmarks/quality.py --recbole-python /tmp/rb/bin/python   # + RecBole's NeuMF, same split

- `ncf` protocol (leave-latest-out, ties by the input's line order, 100 sampled negatives):
  popularity, NeuMF -> HR@10, NDCG@10. Also: how many users' latest interactions tie, and what
  the earlier tie rule (`--tie-break item`) did to popularity's HR@10 on the same seed.
- `vae` protocol (strong generalization, 10% of users held out for test): popularity, EASE,
  Mult-VAE, Mult-DAE -> Recall@20, Recall@50, NDCG@100 over all items.
- With --recbole-python (a venv with recbole==1.2.1, see recbole_compare.py): RecBole's NeuMF with
  its documented defaults, trained and early-stopped by RecBole on the very same `ncf` split of
  seed 0 (exported as atomic files), evaluated by RecBole against the 100 negatives stored in the
  prepared dataset (recbole_compare.use_exported_negatives).

Every recscale model runs with its defaults (`recscale train --data D --model M`); the best epoch on
the validation split is scored on the test split. A cell is the mean over split seeds, then the
mean half-width of the per-split 95% interval over users (±), then the standard deviation across
seeds (sd): the first says how precisely one split measures a model, the second how much the
split itself moves it.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import recscale  # noqa: E402
from common import arguments, machine, publish, table  # noqa: E402
from recscale.config.prepare import PrepareConfig  # noqa: E402
from recscale.data.ingest.sources import load_dataset  # noqa: E402
from recscale.data.prepare.memory import prepare  # noqa: E402

PLAN = {
    "ncf": (["popularity", "neumf"], ["hr@10", "ndcg@10"]),
    "vae": (["popularity", "ease", "multvae", "multdae"], ["recall@20", "recall@50", "ndcg@100"]),
}


def run_one(data_dir: Path, model: str, seed: int, out: Path) -> tuple[dict, float]:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        run = recscale.train(data_dir, model, out, seed=seed, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    return run.evaluate("test", ks=(10, 20, 50, 100), write=False), seconds


def tied_latest(raw) -> tuple[int, int]:
    """(users whose latest timestamp is shared by several of their interactions, users)."""
    frame = raw.interactions.unique(["user", "item"], keep="last")
    latest = frame.filter(pl.col("timestamp") == pl.col("timestamp").max().over("user"))
    per_user = latest.group_by("user").len()
    return int((per_user["len"] > 1).sum()), per_user.height


def cell(results: list[dict], metric: str) -> str:
    values = [r[metric] for r in results]
    half = statistics.mean(r["ci95"][metric] for r in results)
    spread = f"; sd {statistics.pstdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f} (±{half:.4f}{spread})"


def recbole_row(python: str, data_dir: Path, work: Path) -> dict:
    from recbole_compare import export_split, run_recbole_side
    export_split(work, data_dir)
    return run_recbole_side(python, "recbole-quality", work / "recbole")


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--recbole-python", help="python of a venv with recbole==1.2.1 (adds RecBole's NeuMF)")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    raw = load_dataset("ml-latest-small")
    work = Path(tempfile.mkdtemp())
    sections = []
    extra = {}
    for protocol, (models, metrics) in PLAN.items():
        results: dict[str, list[dict]] = {m: [] for m in models}
        times: dict[str, list[float]] = {m: [] for m in models}
        for seed in seeds:
            data_dir = work / f"{protocol}-{seed}"
            prepare(raw, PrepareConfig(protocol=protocol, seed=seed), data_dir)
            for model in models:
                result, seconds = run_one(data_dir, model, seed, work / f"{protocol}-{seed}-{model}")
                results[model].append(result)
                times[model].append(seconds)
                print(protocol, seed, model, {k: round(result[k], 4) for k in metrics}, f"{seconds:.0f}s", flush=True)
        rows = [[model, *(cell(results[model], m) for m in metrics), f"{statistics.mean(times[model]):.0f}"]
                for model in models]
        if protocol == "ncf":
            by_item = work / "ncf-item"
            prepare(raw, PrepareConfig(protocol="ncf", seed=seeds[0], tie_break="item"), by_item)
            old, _ = run_one(by_item, "popularity", seeds[0], work / "ncf-item-popularity")
            from recscale.data.dataset.prepared import PreparedDataset
            tests = [PreparedDataset(d).table("test").select("user", "item") for d in (by_item, work / f"ncf-{seeds[0]}")]
            differ = tests[0].join(tests[1], on="user", suffix="_file").filter(pl.col("item") != pl.col("item_file")).height
            extra["item_rule"] = (old, results["popularity"][0], differ)
            if args.recbole_python:
                extra["recbole"] = recbole_row(args.recbole_python, work / f"ncf-{seeds[0]}", work / "rb")
                print("recbole", extra["recbole"]["test"], f"{extra['recbole']['seconds']:.0f}s", flush=True)
                extra["neumf_seed0"] = results["neumf"][0], times["neumf"][0]
        users = results[models[0]][0]["users"]
        sections.append(f"**`{protocol}` protocol** ({users} test users per split):\n\n"
                        + table(["model", *metrics, "train s"], rows))
    tied, users = tied_latest(raw)
    old, new, differ = extra["item_rule"]
    notes = [f"Ties: {tied} of the {users} users have several interactions at their latest timestamp; "
             f"the default rule (`file`) takes the later line as the test positive, the earlier rule "
             f"(`item`) the higher item id. They choose a different test positive for {differ} users here"
             + (" (this file lists each user's ratings by movieId, so among equal timestamps its line order "
                "is the item order: on such files the two rules agree, on files in time or arrival order they "
                "do not)" if differ == 0 else "")
             + f"; popularity's test HR@10 on split seed {seeds[0]}: {old['hr@10']:.4f} (±{old['ci95']['hr@10']:.4f}) "
               f"under `item`, {new['hr@10']:.4f} (±{new['ci95']['hr@10']:.4f}) under `file`."]
    if "recbole" in extra:
        rb, (ours, ours_s) = extra["recbole"], extra["neumf_seed0"]
        notes.append(
            "Same split, both tools (split seed 0, the `ncf` split exported to RecBole's atomic files): "
            "NeuMF test metrics, each tool with its own defaults and early stopping.\n\n" + table(
                ["tool", "hr@10", "ndcg@10", "epochs", "train + valid s"],
                [["RecBole 1.2.1 NeuMF (64/64 factors, MLP 128-64, dropout 0.1, batch 2,048, lr 0.001, "
                  "early stop on MRR@10)", f"{rb['test']['hr@10']:.4f}", f"{rb['test']['ndcg@10']:.4f}",
                  str(len(rb["curve"])), f"{rb['seconds']:.0f}"],
                 ["recscale NeuMF (defaults)", f"{ours['hr@10']:.4f} (±{ours['ci95']['hr@10']:.4f})",
                  f"{ours['ndcg@10']:.4f} (±{ours['ci95']['ndcg@10']:.4f})", "-", f"{ours_s:.0f}"]])
            + "\n\nBoth tools rank each validation and test positive among the same 100 negatives, those "
              "stored in the prepared dataset (RecBole is given them in place of its `uni100` draws, "
              "which it would redraw at every evaluation).")
    body = (f"## Quality on ml-latest-small (`benchmarks/quality.py`)\n\n{machine()}. Test-split metrics, "
            f"mean over split seeds {args.seeds} (± the mean half-width of each split's 95% interval "
            f"over users; sd the standard deviation across seeds); every model with its default "
            f"settings, best validation epoch.\n\n" + "\n\n".join(sections) + "\n\n" + "\n\n".join(notes))
    publish(args, "quality", body)


if __name__ == "__main__":
    main()

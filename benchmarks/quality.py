"""Quality on the embedded MovieLens ml-latest-small, each model against popularity.

    python benchmarks/quality.py            # 3 split seeds, about 15 minutes on 2 cores

- `ncf` protocol (leave-latest-out, 100 sampled negatives): popularity, NeuMF -> HR@10, NDCG@10.
- `vae` protocol (strong generalization, 10% of users held out for test): popularity, EASE,
  Mult-VAE, Mult-DAE -> Recall@20, Recall@50, NDCG@100 over all items.
Every model runs with its defaults (`recscale train --data D --model M`); the best epoch on the
validation split is scored on the test split. Each split seed gives a different split (and, with
only 65 test users under `vae`, noticeably different numbers), so we report mean and spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, table, write_section  # noqa: E402

from recscale.config import PrepareConfig  # noqa: E402
from recscale.data.prepare import prepare  # noqa: E402
from recscale.data.sources import load_dataset  # noqa: E402
from recscale.evaluation.protocols import evaluate  # noqa: E402
import recscale  # noqa: E402

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    raw = load_dataset("ml-latest-small")
    work = Path(tempfile.mkdtemp())
    sections = []
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
        rows = []
        for model in models:
            cells = []
            for metric in metrics:
                values = [r[metric] for r in results[model]]
                spread = statistics.pstdev(values) if len(values) > 1 else 0.0
                cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
            rows.append([model, *cells, f"{statistics.mean(times[model]):.0f}"])
        users = results[models[0]][0]["users"]
        sections.append(f"**`{protocol}` protocol** ({users} test users per split):\n\n"
                        + table(["model", *metrics, "train s"], rows))
    body = (f"## Quality on ml-latest-small (`benchmarks/quality.py`)\n\n{machine()}. Test-split metrics, "
            f"mean ± standard deviation over split seeds {args.seeds}; every model with its default "
            f"settings, best validation epoch.\n\n" + "\n\n".join(sections))
    print(body)
    if not args.no_write:
        write_section("quality", body)


if __name__ == "__main__":
    main()

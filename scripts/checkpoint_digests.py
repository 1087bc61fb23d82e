"""Digests of what the command line writes for the embedded data: prepared files, and every tensor
of the NeuMF and Mult-VAE checkpoints (model and optimizer state). A refactoring that claims no
change of behaviour must leave them identical:

    python scripts/checkpoint_digests.py > before.json        # on the old commit
    python scripts/checkpoint_digests.py --compare before.json # on the new one: exit 1 on any difference

Tensors are hashed by dtype, shape and bytes (the checkpoint file itself also holds the
pickling layout, which says nothing about behaviour); the prepared Parquet files by their rows.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl
import torch

RECSCALE = [sys.executable, "-m", "recscale"]
RUNS = {  # name: (protocol, model, extra train flags)
    "neumf": ("ncf", "neumf", ["--epochs", "2", "-p", "factors=16", "-p", "layers=[64,32,16]"]),
    "multvae": ("vae", "multvae", ["--epochs", "3"]),
}


def tensor_digests(value, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8)
        out[prefix] = f"{t.dtype} {tuple(t.shape)} " + hashlib.sha256(raw.numpy().tobytes()).hexdigest()[:16]
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            tensor_digests(value[key], f"{prefix}.{key}", out)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            tensor_digests(item, f"{prefix}[{i}]", out)
    elif prefix.endswith("seconds") or prefix.endswith("per_second"):
        return  # timings are not behaviour
    elif isinstance(value, (int, float, str, bool)) or value is None:
        out[prefix] = repr(value)


def frame_digest(path: Path) -> str:
    frame = pl.read_parquet(path)
    return f"{frame.shape} " + hashlib.sha256(frame.hash_rows(seed=0).to_numpy().tobytes()).hexdigest()[:16]


def digests(work: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, (protocol, model, flags) in RUNS.items():
        data, run = work / f"data-{protocol}", work / f"run-{name}"
        if not data.exists():
            subprocess.run([*RECSCALE, "prepare", "--dataset", "ml-latest-small", "--out", str(data),
                            "--protocol", protocol, "--seed", "7"], check=True, capture_output=True)
            for parquet in sorted(data.glob("*.parquet")):
                out[f"{protocol}/{parquet.name}"] = frame_digest(parquet)
        subprocess.run([*RECSCALE, "train", "--data", str(data), "--model", model, "--out", str(run),
                        "--seed", "3", "--no-progress", *flags], check=True, capture_output=True)
        for checkpoint in ("last", "best"):
            state = torch.load(run / "checkpoints" / f"{checkpoint}.pt", weights_only=True)
            tensor_digests(state, f"{name}/{checkpoint}", out)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", help="a JSON file written by this script; exit 1 on any difference")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        found = digests(Path(work))
    if not args.compare:
        print(json.dumps(found, indent=1))
        return 0
    expected = json.loads(Path(args.compare).read_text())
    differ = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
    for key in differ:
        print(f"{key}: {expected.get(key)} -> {found.get(key)}")
    print(f"{len(found)} digests, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())

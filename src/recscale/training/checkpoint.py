"""Checkpoints: written atomically with a SHA-256 sidecar; read back without running any code."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file, sha256_file


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
        digest = sha256_file(tmp)
    with atomic_file(path.with_name(path.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Verify the checksum, then load with `weights_only=True`, which refuses to unpickle anything
    but tensors and plain containers (so a crafted file cannot execute code)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists():
        raise RecscaleError(f"{path}: checkpoint not found")
    if not sidecar.exists():
        raise RecscaleError(f"{sidecar}: checksum file missing; refusing to load an unverified checkpoint")
    expected = sidecar.read_text().split()[0] if sidecar.read_text().split() else ""
    if sha256_file(path) != expected:
        raise RecscaleError(f"{path}: checksum mismatch (truncated or corrupted checkpoint)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise RecscaleError(f"{path}: refused to load: {str(exc).splitlines()[0]}") from None

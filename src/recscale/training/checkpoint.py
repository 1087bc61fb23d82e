"""Checkpoints: written atomically with a SHA-256 sidecar; read back without running any code.

The checkpoint and its sidecar are two files, hence two renames. The sidecar goes first and lists
the checksum of the new checkpoint and of the one it replaces, so a crash between the renames
leaves the old checkpoint with a sidecar that still vouches for it; after the second rename the new
one matches. Corruption or truncation matches neither and is refused."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file, sha256_file


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    with atomic_file(path) as tmp:
        torch.save(state, tmp)
        lines = [f"{sha256_file(tmp)}  {path.name}"]
        if path.exists():
            lines.append(f"{sha256_file(path)}  {path.name} (being replaced)")
        with atomic_file(sidecar) as side:
            side.write_text("\n".join(lines) + "\n")
    if len(lines) > 1:  # the replacement is done: vouch for the new file only
        with atomic_file(sidecar) as side:
            side.write_text(lines[0] + "\n")


def load_checkpoint(path: str | Path, map_location="cpu") -> dict[str, Any]:
    """Verify the checksum, then load with `weights_only=True`, which refuses to unpickle anything
    but tensors and plain containers (so a crafted file cannot execute code)."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists():
        raise RecscaleError(f"{path}: checkpoint not found")
    if not sidecar.exists():
        raise RecscaleError(f"{sidecar}: checksum file missing; refusing to load an unverified checkpoint")
    accepted = {line.split()[0] for line in sidecar.read_text().splitlines() if line.split()}
    if sha256_file(path) not in accepted:
        raise RecscaleError(f"{path}: checksum mismatch (truncated or corrupted checkpoint)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        raise RecscaleError(f"{path}: refused to load: {str(exc).splitlines()[0]}") from None

"""Checkpoints: written atomically with a SHA-256 sidecar; read back without running any code.

The checkpoint and its sidecar are two files, hence two renames. The sidecar goes first and lists
the checksum of the new checkpoint and of the one it replaces, so a crash between the renames
leaves the old checkpoint with a sidecar that still vouches for it; after the second rename the new
one matches. Corruption or truncation matches neither and is refused."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from recscale.errors import RecscaleError
from recscale.fsutil import atomic_file, sha256_file


class _WriteErrors(io.RawIOBase):
    """A file that remembers the OSError of a failed write, so that it can be reported as it was."""

    def __init__(self, handle):
        super().__init__()
        self.handle, self.error = handle, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as handle:
            recorder = _WriteErrors(handle)
            try:
                torch.save(state, recorder)
            except RuntimeError as exc:
                # torch's writer turns a failed write (a full disk) into an opaque RuntimeError
                raise recorder.error or OSError(f"cannot save checkpoint: {str(exc).splitlines()[0]}") from exc
        lines = [f"{sha256_file(tmp)}  {path.name}"]
        if path.exists():
            lines.append(f"{sha256_file(path)}  {path.name} (being replaced)")
        with atomic_file(sidecar) as side:
            side.write_text("\n".join(lines) + "\n")
    if len(lines) > 1:  # the replacement is done: vouch for the new file only
        with atomic_file(sidecar) as side:
            side.write_text(lines[0] + "\n")


def load_checkpoint(path: str | Path, map_location="cpu", required: tuple[str, ...] = ("model",)) -> dict[str, Any]:
    """Verify the checksum, then load with `weights_only=True`, which refuses to unpickle anything
    but tensors and plain containers (so a crafted file cannot execute code). The entries in
    `required` must be present."""
    path = Path(path)
    sidecar = path.with_name(path.name + ".sha256")
    if not path.exists():
        raise RecscaleError(f"{path}: checkpoint not found")
    if not sidecar.exists():
        raise RecscaleError(f"{sidecar}: checksum file missing; refusing to load an unverified checkpoint")
    try:
        accepted = {line.split()[0] for line in sidecar.read_text().splitlines() if line.split()}
    except (OSError, UnicodeDecodeError) as exc:
        raise RecscaleError(f"{sidecar}: unreadable checksum file: {exc}") from None
    if sha256_file(path) not in accepted:
        raise RecscaleError(f"{path}: checksum mismatch (truncated or corrupted checkpoint)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as exc:
        raise RecscaleError(f"{path}: refused to load: {str(exc).splitlines()[0]}") from None
    missing = [key for key in required if not isinstance(state, dict) or key not in state]
    if missing:
        raise RecscaleError(f"{path}: not a recscale checkpoint of this kind (no {', '.join(missing)})")
    return state

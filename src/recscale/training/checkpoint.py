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


# ----------------------------------------------------------------------------- sharded state
#
# A run with sharded embedding tables (sharding.py) checkpoints in 1 + W files: each worker writes
# NAME.stepS.shardRofW.pt with its local shards, then worker 0 writes NAME.pt, whose placeholders
# name the shards and whose `sharding` entry names the step S. NAME.pt is the commit point: until it
# is replaced, it points at shard files that are still there (older steps are deleted only after).

SHARD_MARK = "__sharded__"


def _is_sharded(value) -> bool:
    return type(value).__name__ == "ShardedTensor" and hasattr(value, "local_shards")


def split_local_shards(state, path=()) -> tuple[Any, dict[str, list[dict]]]:
    """(state with every ShardedTensor replaced by a placeholder, {placeholder key: local shards})."""
    if _is_sharded(state):
        key = "/".join(map(str, path))
        shards = [{"offsets": list(s.metadata.shard_offsets), "tensor": s.tensor.detach().cpu().clone()}
                  for s in state.local_shards()]
        return {SHARD_MARK: key, "size": list(state.metadata().size)}, {key: shards}
    found: dict[str, list[dict]] = {}
    if isinstance(state, dict):
        out = {}
        for k, v in state.items():
            out[k], more = split_local_shards(v, (*path, k))
            found |= more
        return out, found
    if isinstance(state, (list, tuple)):
        items = []
        for i, v in enumerate(state):
            item, more = split_local_shards(v, (*path, i))
            items.append(item)
            found |= more
        return type(state)(items), found
    return state, found


def shard_file(path: Path, step: int, rank: int, world_size: int) -> Path:
    return path.with_name(f"{path.stem}.step{step}.shard{rank}of{world_size}.pt")


def save_local_shards(path: Path, shards: dict, step: int, rank: int, world_size: int, **own) -> None:
    """`own`: entries whose structure differs between workers (the fused optimizer's state lists
    the worker's own tables only), kept with its shards."""
    save_checkpoint(shard_file(path, step, rank, world_size), {"shards": shards, "step": step, **own})


def remove_stale_shards(path: Path, step: int, rank: int, world_size: int) -> None:
    keep = shard_file(path, step, rank, world_size).name
    for old in path.parent.glob(f"{path.stem}.step*.shard{rank}of{world_size}.pt*"):
        if old.name not in (keep, keep + ".sha256"):
            old.unlink(missing_ok=True)


def _placeholders(state, found=None) -> list[dict]:
    found = [] if found is None else found
    if isinstance(state, dict):
        if SHARD_MARK in state:
            found.append(state)
        else:
            for v in state.values():
                _placeholders(v, found)
    elif isinstance(state, (list, tuple)):
        for v in state:
            _placeholders(v, found)
    return found


def read_local_shards(path: Path, state: dict, rank: int) -> dict[str, Any]:
    """This worker's file of the sharded checkpoint at `path` (whose main file gave `state`):
    {"shards": {key: local shards}, "step": S, and its own entries}."""
    info = state["sharding"]
    return load_checkpoint(shard_file(path, info["step"], rank, info["world_size"]), required=("shards",))


def fill_sharded(saved, live, shards: dict[str, list[dict]]):
    """`saved` with each placeholder replaced by the matching ShardedTensor of `live` (the same
    structure, freshly taken from the model or optimizer), its local shards overwritten with the
    saved ones."""
    if isinstance(saved, dict) and SHARD_MARK in saved:
        if not _is_sharded(live):
            raise RecscaleError(f"checkpoint: {saved[SHARD_MARK]} is sharded in the checkpoint but not in this run")
        pieces = {tuple(p["offsets"]): p["tensor"] for p in shards.get(saved[SHARD_MARK], [])}
        for shard in live.local_shards():
            offsets = tuple(shard.metadata.shard_offsets)
            if offsets not in pieces or tuple(pieces[offsets].shape) != tuple(shard.tensor.shape):
                raise RecscaleError(f"checkpoint: {saved[SHARD_MARK]} was sharded differently (another plan or "
                                    f"number of workers); resume with the run's own settings")
            shard.tensor.detach().copy_(pieces[offsets])
        return live
    if isinstance(saved, dict):
        return {k: fill_sharded(v, live[k] if isinstance(live, dict) and k in live else None, shards)
                for k, v in saved.items()}
    if isinstance(saved, (list, tuple)):
        return type(saved)(fill_sharded(v, live[i] if live is not None and i < len(live) else None, shards)
                           for i, v in enumerate(saved))
    return saved


def gather_sharded(path: Path, state: dict) -> dict:
    """A sharded checkpoint's `model` entry with whole tensors, assembled on the CPU one shard file
    at a time (evaluate, recommend and export run in one process)."""
    model = state["model"]
    if "sharding" not in state:
        return model
    holes = {p[SHARD_MARK]: p for p in _placeholders(model)}
    full = {key: torch.zeros(p["size"]) for key, p in holes.items()}
    for rank in range(state["sharding"]["world_size"]):
        for key, pieces in read_local_shards(path, state, rank)["shards"].items():
            for piece in pieces if key in full else ():
                index = tuple(slice(o, o + n) for o, n in zip(piece["offsets"], piece["tensor"].shape))
                full[key][index] = piece["tensor"]
    out = {}
    for name, value in model.items():
        out[name] = full[value[SHARD_MARK]] if isinstance(value, dict) and SHARD_MARK in value else value
    return out

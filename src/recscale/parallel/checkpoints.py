"""The checkpoint of a run with sharded embedding tables (sharding.py), and the protocol that writes it.

A run with sharded embedding tables (sharding.py) checkpoints in 1 + W files: each worker writes
NAME.stepS.shardRofW.pt with its local shards, then worker 0 writes NAME.pt, whose placeholders
name the shards and whose `sharding` entry names the step S. NAME.pt is the commit point: until it
is replaced, it points at shard files that are still there (older steps are deleted only after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from recscale.errors import RecscaleError
from recscale.parallel.distributed import barrier, broadcast_object
from recscale.tensorfiles import load_checkpoint, save_checkpoint

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


def save_sharded(folder: Path | None, name: str, state: dict, step: int, rank: int, world_size: int,
                 commit: Callable[[Path, dict], None], folder_after: Callable[[], Path | None]) -> None:
    """Every worker writes its shards of `state`, then worker 0 the file that points at them
    (`commit(path, state)`: writes NAME.pt, and may move the folder, e.g. publish a run built aside),
    then each worker removes its shards of older steps. `folder`: where checkpoints go, known on
    worker 0 only (None there: nothing is written); `folder_after()`: where they are after `commit`."""
    where = [folder]
    broadcast_object(where)  # the others learn where worker 0 writes
    if where[0] is None:
        return
    path = where[0] / f"{name}.pt"
    state, shards = split_local_shards(state)
    if rank == 0:
        path.parent.mkdir(exist_ok=True)
    barrier()
    own = {"optimizer": state["optimizer"]} if "optimizer" in state else {}
    save_local_shards(path, shards, step, rank, world_size, **own)
    barrier()
    if rank == 0:
        commit(path, {**state, "sharding": {"step": step, "world_size": world_size}})
    barrier()
    final = [folder_after() if rank == 0 else None]
    broadcast_object(final)  # committing may have moved the folder
    remove_stale_shards(final[0] / f"{name}.pt", step, rank, world_size)


def restore_sharded(path: Path, state: dict, rank: int, world_size: int, model_state: dict,
                    optimizer_state: dict) -> tuple[dict, dict]:
    """(model state, optimizer state) of a sharded `last` checkpoint (whose NAME.pt at `path` gave
    `state`) for this worker: the live ShardedTensors of `model_state` and `optimizer_state` (fresh
    from the model and optimizer) filled with the worker's saved shards."""
    if state["sharding"]["world_size"] != world_size:
        raise RecscaleError(f"--resume: the run's tables are sharded over {state['sharding']['world_size']} "
                            f"workers; resume it with as many (this group has {world_size})")
    own = read_local_shards(path, state, rank)
    return fill_sharded(state["model"], model_state, own["shards"]), fill_sharded(own["optimizer"], optimizer_state,
                                                                                   own["shards"])

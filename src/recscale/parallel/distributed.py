"""Data parallelism through torch.distributed, launched by torchrun.

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE (and the rendezvous) for each worker; we read them,
initialize the process group (NCCL on CUDA, gloo on CPU), wrap the model in DistributedDataParallel
and all-reduce sums. Without torchrun everything degrades to one process and no-ops.
"""

from __future__ import annotations

import dataclasses
import os

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    restart: int = 0  # torchrun's TORCHELASTIC_RESTART_COUNT: > 0 after a failed group was restarted

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env() -> DistInfo:
    env = os.environ
    return DistInfo(rank=int(env.get("RANK", 0)), local_rank=int(env.get("LOCAL_RANK", 0)),
                    world_size=int(env.get("WORLD_SIZE", 1)),
                    restart=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))


def device_for(info: DistInfo, requested: torch.device) -> torch.device:
    """Each worker of a CUDA run takes the GPU of its local rank."""
    if requested.type == "cuda" and info.enabled:
        return torch.device("cuda", info.local_rank)
    return requested


def init(info: DistInfo, device: torch.device) -> None:
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "MASTER_ADDR" not in os.environ:
        dist.init_process_group(backend, rank=info.rank, world_size=info.world_size)
        return
    # torchrun's agent hosts the store and keeps it across restarts of the worker group; keys
    # prefixed by the restart count keep a restarted group from reading the dead group's addresses.
    agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), info.world_size,
                          is_master=info.rank == 0 and not agent_store)
    dist.init_process_group(backend, store=dist.PrefixStore(f"recscale/attempt_{info.restart}", store),
                            rank=info.rank, world_size=info.world_size)


def destroy(clean: bool = True) -> None:
    """End the process group; after a clean finish, once every rank's work is done (gloo threads
    still holding a collective's tensors when the interpreter shuts down abort the process, seen
    intermittently after TorchRec's asynchronous all-to-alls). After a failure no barrier: the
    other ranks may be gone."""
    if dist.is_initialized():
        if clean and dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, info: DistInfo, device: torch.device):
    """DDP around `model` (which stays the module we checkpoint), or None in one process."""
    if not info.enabled:
        return None
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (in place; returns it). A no-op in one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(values: list) -> None:
    """Rank 0's list entries to every rank (in place). A no-op in one process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(values, src=0)

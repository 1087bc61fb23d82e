"""Embedding tables sharded across torchrun workers with TorchRec (`--embeddings sharded`); the only
module that imports torchrec.

A model that keeps its tables in `model.tables` (models/tables.py: EmbeddingTables) gets them
replaced by `ShardedTables`, a TorchRec EmbeddingBagCollection with the same forward (one id per
bag, so a bag is a lookup). TorchRec's planner places each table (table-wise, column-wise, and on
CUDA row-wise) within the workers' memory, DistributedModelParallel shards them and wraps the
dense layers in DDP, and FBGEMM fuses the tables' optimizer into the backward pass (the update is
done when backward returns; the dense layers keep recscale's optimizer).

    --optimizer   tables (--table-optimizer auto)     dense layers
    adam          adam on CUDA; rowwise_adagrad on CPU  Adam
    adagrad       adagrad                               Adagrad
    sgd           sgd (FBGEMM's has no momentum:        SGD
                  --momentum 0 is required)
    rmsprop       rowwise_adagrad                       RMSprop
    lars          refused: LARS needs every table's norm on one worker

What differs from a replicated run, and why:
- each worker validates every user (the lookups are collective, so all workers must score the
  same batches); metrics equal the replicated run's, at world-size times the validation compute;
- fp16 is refused (a fused update cannot be skipped when the loss scaler finds an overflow); bf16
  autocast covers the dense layers;
- gradient clipping covers the dense gradients only (the tables are updated inside backward);
- checkpoints hold each worker's shards in its own file (parallel/checkpoints.py), so a resume
  needs the same number of workers; evaluate, recommend and export gather the tables into one
  process's CPU memory, one shard file at a time.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
import torch.distributed as dist
from torch import nn

from recscale.config.run import OptimConfig, SystemConfig
from recscale.errors import RecscaleError
from recscale.models.tables import EmbeddingTables
from recscale.progress import LOGGER
from recscale.resources import parse_size

CPU_TABLE_OPTIMIZERS = ("sgd", "adagrad", "rowwise_adagrad")
CUDA_TABLE_OPTIMIZERS = (*CPU_TABLE_OPTIMIZERS, "adam")
CUDA_ONLY_SHARDING = ("row_wise", "table_row_wise")
COLUMN_SHARD_MIN = 32
INSTALL = ("pip install 'recscale[torchrec]' on CUDA machines; on CPU-only machines `make install-torchrec` "
           "(README: Sharded embedding tables)")


def require_torchrec() -> None:
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except (ImportError, OSError, RuntimeError) as exc:
        raise RecscaleError(f"--embeddings sharded: TorchRec/FBGEMM cannot be imported ({str(exc).splitlines()[0]}); "
                            f"{INSTALL}") from None


def table_optimizer(optimizer: str, requested: str, device: torch.device) -> str:
    """The fused table optimizer a run uses (see the module's table)."""
    supported = CUDA_TABLE_OPTIMIZERS if device.type == "cuda" else CPU_TABLE_OPTIMIZERS
    if optimizer == "lars":
        raise RecscaleError("--optimizer lars: not with --embeddings sharded (LARS needs each table's whole "
                            "gradient norm, which no worker holds); use adam, adagrad or sgd")
    name = requested
    if name == "auto":
        name = optimizer if optimizer in supported else "rowwise_adagrad"
    if name not in supported:
        raise RecscaleError(f"--table-optimizer {name}: FBGEMM has no fused {name} on {device.type} "
                            f"(choose from {', '.join(supported)})")
    return name


ADAGRAD_FOR_ADAM_LR = 0.05  # row-wise Adagrad's rate where auto replaces Adam (BENCHMARKS.md: sharded)


def table_lr(optim: OptimConfig, name: str) -> float:
    """--table-lr; when 0, --lr, except where auto replaced Adam by row-wise Adagrad, whose rates
    are an order of magnitude above Adam's."""
    if optim.table_lr:
        return optim.table_lr
    replaced = optim.table_optimizer == "auto" and name == "rowwise_adagrad" and optim.optimizer == "adam"
    return ADAGRAD_FOR_ADAM_LR if replaced else optim.lr


def check(model: nn.Module, optim: OptimConfig, system: SystemConfig, device: torch.device, world_size: int) -> str:
    """Refuse what a sharded run cannot do, before anything is written; returns the table optimizer."""
    if not isinstance(getattr(model, "tables", None), EmbeddingTables):
        raise RecscaleError(f"--embeddings sharded: this model ({type(model).__name__}) has no embedding tables to shard "
                            f"(neumf, gmf, mlp and embedding-mlp have)")
    if system.precision == "fp16":
        raise RecscaleError("--precision fp16: not with --embeddings sharded (the tables' fused update cannot be "
                            "skipped when the loss scaler finds an overflow); use bf16 or fp32")
    if system.sharding in CUDA_ONLY_SHARDING and device.type != "cuda":
        raise RecscaleError(f"--sharding {system.sharding}: FBGEMM shards rows on CUDA only; on CPU use "
                            f"auto, table_wise, column_wise or table_column_wise")
    odd = {name: s.dim for name, s in model.tables.specs.items() if s.dim % 4}
    if odd:
        table, dim = next(iter(odd.items()))
        fields = getattr(getattr(model, "cfg", None), "__dataclass_fields__", {})
        hint = f"-p {table}_dim={(dim + 3) // 4 * 4}" if f"{table}_dim" in fields else "-p with widths divisible by 4"
        raise RecscaleError(f"--embeddings sharded: table {table} is {dim} wide; FBGEMM's kernels need widths that are "
                            f"multiples of 4 ({hint})")
    name = table_optimizer(optim.optimizer, optim.table_optimizer, device)
    if name == "sgd" and optim.momentum > 0:
        raise RecscaleError(f"--momentum {optim.momentum}: FBGEMM's fused SGD for the tables has no momentum; "
                            f"give --momentum 0, or --table-optimizer adagrad/rowwise_adagrad")
    if world_size < 2 or not dist.is_initialized():
        raise RecscaleError("--embeddings sharded: run under torchrun with 2 or more workers "
                            "(recscale train --nproc N ..., or torchrun --nproc-per-node N -m recscale train ...)")
    require_torchrec()
    return name


class ShardedTables(nn.Module):
    """EmbeddingTables' forward over a TorchRec EmbeddingBagCollection (one feature per table).
    Its state_dict uses EmbeddingTables' key names, so checkpoints read the same either way."""

    def __init__(self, tables: EmbeddingTables):
        super().__init__()
        import torchrec
        self.specs = dict(tables.specs)
        configs = [torchrec.EmbeddingBagConfig(name=name, embedding_dim=s.dim, num_embeddings=s.rows,
                                               feature_names=[name], pooling=torchrec.PoolingType.SUM)
                   for name, s in self.specs.items()]
        self.ebc = torchrec.EmbeddingBagCollection(configs, device=torch.device("meta"))
        self._register_state_dict_hook(_rename_out)
        self._register_load_state_dict_pre_hook(self._rename_in)

    def _rename_in(self, state_dict, prefix, *args):
        for name in self.specs:
            if prefix + f"{name}.weight" in state_dict:
                state_dict[prefix + PREFIX + f"{name}.weight"] = state_dict.pop(prefix + f"{name}.weight")

    def forward(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from torchrec import KeyedJaggedTensor
        shape = next(iter(ids.values())).shape
        flat = {feature: t.reshape(-1) for feature, t in ids.items()}
        n = next(iter(flat.values())).numel()
        values = torch.cat([flat[s.feature] for s in self.specs.values()])  # (T * n,)
        device = values.device
        kjt = KeyedJaggedTensor(keys=list(self.specs), values=values,
                                lengths=torch.ones(len(self.specs) * n, dtype=torch.int32, device=device))
        pooled = self.ebc(kjt).to_dict()
        return {name: pooled[name].reshape(*shape, -1) for name in self.specs}


PREFIX = "ebc.embedding_bags."


def _rename_out(module, state_dict, prefix, local_metadata):
    for key in [k for k in state_dict if k.startswith(prefix + PREFIX)]:
        state_dict[prefix + key[len(prefix + PREFIX):]] = state_dict.pop(key)
    return state_dict


@contextlib.contextmanager
def _quiet():
    """TorchRec's planner logs advice meant for its own developers (topology factories, storage
    heuristics, deprecations) on every run; recscale's errors say what matters."""
    logger = logging.getLogger("torchrec")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def _constraints(specs: dict, sharding: str, device: torch.device):
    """The kinds the planner may choose: the one forced, or under auto every kind that splits a
    table (its data_parallel would replicate small tables, which is what --embeddings replicated is)."""
    from torchrec.distributed.planner import ParameterConstraints
    kinds = [sharding] if sharding != "auto" else [
        "table_wise", "column_wise", "table_column_wise", *(CUDA_ONLY_SHARDING if device.type == "cuda" else ())]
    # Column shards down to 32 wide (TorchRec's default floor is 128, which leaves NeuMF's 64- and
    # 128-wide tables whole, so memory cannot be balanced across workers); multiples of 4 for FBGEMM.
    return {name: ParameterConstraints(sharding_types=kinds, min_partition=min(COLUMN_SHARD_MIN, max(4, s.dim // 2)))
            for name, s in specs.items()}


INIT_CHUNK_ROWS = 1 << 20  # rows drawn at a time: the transient copy stays small beside a big shard


@torch.no_grad()
def _initialize_shards(sharded: ShardedTables, tables: EmbeddingTables) -> None:
    """Each worker draws only its own shards, the same values the unsharded tables would hold,
    written into FBGEMM's weights in place (the state_dict's local shards are views of them)."""
    state = sharded.state_dict()
    for name in sharded.specs:
        for shard in state[f"{name}.weight"].local_shards():
            (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            for start in range(0, rows, INIT_CHUNK_ROWS):
                stop = min(start + INIT_CHUNK_ROWS, rows)
                shard.tensor[start:stop].copy_(tables.initial_values(name, slice(row + start, row + stop),
                                                                     slice(col, col + cols)))


def shard(model: nn.Module, optim: OptimConfig, system: SystemConfig, device: torch.device, world_size: int):
    """Replace model.tables by sharded ones; returns (the DMP module that runs the forward, the
    fused table optimizer, the ids of the table parameters that recscale's optimizers must skip, the
    tables' rate / --lr)."""
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import PlannerError
    from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
    from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

    name = check(model, optim, system, device, world_size)
    lr = table_lr(optim, name)
    if name != optim.optimizer and dist.get_rank() == 0:
        LOGGER.info(f"recscale train: note: FBGEMM has no fused {optim.optimizer} on {device.type}; the sharded "
                    f"tables use {name} at lr {lr:g} (--table-optimizer, --table-lr)")
    tables = model.tables
    sharded = ShardedTables(tables)
    model.tables = sharded
    optimizer = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad, "rowwise_adagrad": RowWiseAdagrad,
                 "adam": torch.optim.Adam}[name]
    settings = {"lr": lr, "weight_decay": optim.weight_decay}
    if name != "sgd":  # torch's eps (FBGEMM's default differs), so that both paths update alike
        settings["eps"] = 1e-8 if name == "adam" else 1e-10
    apply_optimizer_in_backward(optimizer, sharded.ebc.parameters(), settings)
    sharders = [EmbeddingBagCollectionSharder()]
    with _quiet():
        cap = {} if system.table_memory == "auto" else {
            "hbm_cap" if device.type == "cuda" else "ddr_cap": parse_size(system.table_memory, "--table-memory")}
        planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=device.type, **cap),
                                           constraints=_constraints(sharded.specs, system.sharding, device))
        try:
            plan = planner.collective_plan(model, sharders, dist.group.WORLD)
            net = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
        except (RuntimeError, AssertionError, PlannerError) as exc:  # e.g. column shards must be multiples of 4 wide
            raise RecscaleError(f"--sharding {system.sharding}: TorchRec cannot shard these tables: "
                                f"{str(exc).splitlines()[0][:300]}") from None
    _initialize_shards(sharded, tables)
    table_ids = {id(p) for p in sharded.parameters()}
    return net, (net.fused_optimizer, table_ids, lr / optim.lr)


def local_table_sizes(model: nn.Module) -> dict[str, int]:
    """Bytes of each table's weights this worker holds (its shards; 0 for a table held elsewhere)."""
    sizes = {}
    for key, value in model.tables.state_dict().items():
        pieces = [shard.tensor for shard in value.local_shards()] if hasattr(value, "local_shards") else [value]
        sizes[key] = sum(t.numel() * t.element_size() for t in pieces)
    return sizes


def local_table_bytes(model: nn.Module) -> int:
    """Bytes of table weights this worker holds."""
    return sum(local_table_sizes(model).values())

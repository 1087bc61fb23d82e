"""Embedding tables looked up together: the part of a model that `--embeddings sharded` splits
across workers (sharding.py swaps this module for a TorchRec one with the same forward).

    forward({"users": (...,), "items": (...,)}) -> {table name: (..., dim)}

One call looks up every table, so that a sharded implementation exchanges ids and vectors across
workers once per step rather than once per table.

Tables are initialized N(0, std) a block of rows at a time, each block from its own generator
seeded by (the model's seed draw, table, block). Any row range can therefore be drawn alone: a
sharded run initializes only its own shards, yet gets exactly the weights an unsharded run of the
same seed starts from (which the equivalence tests rely on). Under `deferred_tables()` the tables
are built on the meta device (no memory) for the sharding to materialize.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import torch
from torch import nn

INIT_BLOCK_ROWS = 1 << 16
_DEFERRED = contextvars.ContextVar("recscale_deferred_tables", default=False)


@contextlib.contextmanager
def deferred_tables():
    """Build EmbeddingTables on the meta device (a sharded run materializes only its shards)."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


@dataclasses.dataclass(frozen=True)
class TableSpec:
    feature: str   # the batch field whose ids index this table: "users" or "items"
    rows: int
    dim: int
    std: float = 0.01


def init_rows(seed: int, table_index: int, spec: TableSpec, rows: slice, columns: slice = slice(None)) -> torch.Tensor:
    """Initial values of rows [rows.start, rows.stop) (and a column range) of a table, drawn block by
    block exactly as the whole table is."""
    start, stop = rows.start or 0, spec.rows if rows.stop is None else rows.stop
    out = []
    for block in range(start // INIT_BLOCK_ROWS, (max(stop, 1) - 1) // INIT_BLOCK_ROWS + 1):
        lo = block * INIT_BLOCK_ROWS
        hi = min(lo + INIT_BLOCK_ROWS, spec.rows)
        g = torch.Generator().manual_seed((seed * 1_000_003 + table_index * 65_537 + block) % (1 << 63))
        values = torch.randn(hi - lo, spec.dim, generator=g) * spec.std  # (block, dim)
        out.append(values[max(start - lo, 0):stop - lo, columns])
    return torch.cat(out) if out else torch.empty(0, spec.dim)[:, columns]


class EmbeddingTables(nn.ModuleDict):
    """Named nn.Embedding tables, each indexed by one id feature."""

    def __init__(self, specs: dict[str, TableSpec], sparse: bool = False):
        device = torch.device("meta") if _DEFERRED.get() else None
        # _weight: nn.Embedding's own N(0, 1) initialization would draw from the caller's generator
        # (and differently on the meta device); reset_parameters below draws instead.
        super().__init__({name: nn.Embedding(s.rows, s.dim, sparse=sparse, _weight=torch.empty(s.rows, s.dim, device=device))
                          for name, s in specs.items()})
        self.specs = dict(specs)
        self.start_from: dict[str, torch.Tensor] = {}  # name -> (rows, dim) a warm start copies over the first rows
        # One draw from the caller's (seeded) generator: the dense layers initialized after the
        # tables draw the same numbers whether the tables are built here or sharded elsewhere.
        self.init_seed = int(torch.randint(1 << 62, (1,)))
        self.reset_parameters()

    @property
    def deferred(self) -> bool:
        return any(t.weight.is_meta for t in self.values())

    @torch.no_grad()
    def reset_parameters(self) -> None:
        if self.deferred:
            return
        for index, (name, spec) in enumerate(self.specs.items()):
            self[name].weight.copy_(init_rows(self.init_seed, index, spec, slice(0, spec.rows)))

    def initial_values(self, name: str, rows: slice, columns: slice = slice(None)) -> torch.Tensor:
        """Rows (and columns) of a table's starting values: the seeded draw, with the rows a warm
        start carries over (models/growth.py) in place of the first ones."""
        index = list(self.specs).index(name)
        values = init_rows(self.init_seed, index, self.specs[name], rows, columns)  # (rows, columns)
        warm = self.start_from.get(name)
        if warm is not None and rows.start < warm.shape[0]:
            stop = min(rows.stop, warm.shape[0])
            values[:stop - rows.start] = warm[rows.start:stop, columns]
        return values

    def id_axes(self, prefix: str) -> dict[str, tuple[int, ...]]:
        """Every table's rows are ids (users or items): axis 0 grows with the dataset."""
        return {f"{prefix}.{name}.weight": (0,) for name in self.specs}

    def forward(self, ids: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self[name](ids[spec.feature]) for name, spec in self.specs.items()}


def rename_legacy_keys(prefix: str, names) -> callable:
    """A load_state_dict pre-hook reading checkpoints written before the tables were grouped
    (`gmf_user.weight` -> `tables.gmf_user.weight`)."""
    def hook(state_dict, module_prefix, *args):
        for name in names:
            old, new = f"{module_prefix}{name}.weight", f"{module_prefix}{prefix}.{name}.weight"
            if old in state_dict and new not in state_dict:
                state_dict[new] = state_dict.pop(old)
    return hook

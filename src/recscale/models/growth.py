"""Warm start: a model built for a grown dataset (`prepare --extend`) takes the weights of a model
trained on its parent (or an ancestor).

Every user, item and genre of the parent keeps its number in the extended dataset, so the rows
(or columns) a model keeps per id line up: the parent's are copied, the new ones keep the values
this freshly built, seeded model drew for them (what a fresh run of the grown dataset starts
from), and every other tensor is copied whole. A model names the axes its tensors index by id
(`Recommender.id_axes`); any other difference in shape means other hyperparameters, refused in one
line. Tables built on the meta device (a sharded run materializes them shard by shard later) take
the copied rows through `EmbeddingTables.start_from`, so each worker fills only its own shards.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.errors import RecscaleError
from recscale.models.tables import EmbeddingTables


def _deferred_tables(model: nn.Module) -> dict[str, tuple[EmbeddingTables, str]]:
    """state-dict key -> (tables, table name) of every table still on the meta device."""
    return {f"{prefix}.{name}.weight" if prefix else f"{name}.weight": (tables, name)
            for prefix, tables in model.named_modules() if isinstance(tables, EmbeddingTables) and tables.deferred
            for name in tables.specs}


def _fits(old: torch.Size, new: torch.Size, growing: tuple[int, ...]) -> bool:
    return len(old) == len(new) and all(o == n or (axis in growing and o <= n)
                                        for axis, (o, n) in enumerate(zip(old, new)))


@torch.no_grad()
def grow_from(model: nn.Module, old: dict[str, torch.Tensor], source: str, id_axes: dict[str, tuple[int, ...]]) -> None:
    """Copy `old` (the state dict of the same model trained on a parent dataset) into `model`:
    whole tensors where shapes agree, the leading block along the `id_axes` where the grown
    dataset has more ids. `source` names the run in errors."""
    own = model.state_dict()
    deferred = _deferred_tables(model)
    absent = [key for key in own if key not in old]
    if absent:
        raise RecscaleError(f"--warm-start: {source} has no {absent[0]} (a model of another kind or composition)")
    for key, new in own.items():
        was = old[key]
        if not isinstance(was, torch.Tensor):
            raise RecscaleError(f"--warm-start: {source}'s {key} is not a tensor (a damaged or foreign checkpoint)")
        if not _fits(was.shape, new.shape, id_axes.get(key, ())):
            raise RecscaleError(f"--warm-start: {source}'s {key} is {tuple(was.shape)}, this model's is "
                                f"{tuple(new.shape)}; train with that run's model settings "
                                f"(--config {source}/config.toml), on a dataset that extends its own")
        if key in deferred:
            tables, name = deferred[key]
            tables.start_from[name] = was.detach().to("cpu", torch.float32)
            continue
        new[tuple(slice(0, n) for n in was.shape)].copy_(was)  # (old rows, ...) of (new rows, ...)

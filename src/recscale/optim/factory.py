"""Optimizers by name, with sparse-gradient embedding tables handled by a sparse-aware optimizer.

Parameters whose gradients are sparse (nn.Embedding(sparse=True)) go to SparseAdam, which updates
only the rows a batch touched (lazy Adam, as TorchRec's row-wise optimizers); a dense Adam would
touch every row of every table each step. For SGD sparse gradients are native. The rest follow the
named optimizer. `Optimizers` steps them together through one GradScaler.
"""

from __future__ import annotations

import torch
from torch import nn

from recscale.errors import RecscaleError
from recscale.optim.lars import LARS, lars_param_groups

OPTIMIZERS = ("adam", "sgd", "lars", "rmsprop", "adagrad")


def _sparse_parameters(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules()
            if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse}


class Optimizers:
    """A few optimizers that act as one: zero_grad, step through a GradScaler, state_dict."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], scales: dict[int, float] | None = None):
        self.optimizers = optimizers
        self.scales = scales or {}  # optimizer index -> its rate / the run's rate (sharded tables' --table-lr)

    @property
    def param_groups(self):
        return [g for o in self.optimizers for g in o.param_groups]

    def zero_grad(self) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)

    def unscale(self, scaler) -> None:
        for o in self.optimizers:
            scaler.unscale_(o)

    def step(self, scaler) -> None:
        for o in self.optimizers:
            scaler.step(o)

    def set_lr(self, lr: float) -> None:
        for i, o in enumerate(self.optimizers):
            for g in o.param_groups:
                g["lr"] = lr * self.scales.get(i, 1.0)

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.optimizers]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, s in zip(self.optimizers, states):
            o.load_state_dict(s)


def _fusable(params: list[torch.Tensor]) -> bool:
    """Fused Adam (one kernel over all parameters) where torch has it: float tensors on the CPU or a
    GPU. On 2 CPU cores it steps Mult-VAE's 24M parameters in 8 ms instead of 100 ms (the default
    multi-tensor path), the same update up to float rounding."""
    return all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params)


def check_optimizer(model: nn.Module, name: str) -> None:
    """Refuse combinations that cannot train, before a run writes anything."""
    if name not in OPTIMIZERS:
        raise RecscaleError(f"--optimizer: unknown optimizer {name!r} (choose from {', '.join(OPTIMIZERS)})")
    if name == "lars" and _sparse_parameters(model):
        raise RecscaleError("--optimizer lars: needs dense embedding gradients "
                            "(-p embedding_gradients=dense or auto)")


def make_optimizers(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                    momentum: float = 0.9, lars_eta: float = 0.001, fused=None) -> Optimizers:
    """`fused`: (the optimizer TorchRec fused into the sharded tables' backward, the ids of those
    parameters, its rate / `lr`): it joins the list first (zero_grad and step set its rate) and the
    rest skip its parameters."""
    check_optimizer(model, name)
    sparse_ids = _sparse_parameters(model)
    if name == "lars":
        return Optimizers([LARS(lars_param_groups(model, weight_decay), lr=lr, momentum=momentum,
                                weight_decay=weight_decay, eta=lars_eta)])
    skip = fused[1] if fused else set()
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in skip]
    sparse = [p for p in params if id(p) in sparse_ids]
    dense = [p for p in params if id(p) not in sparse_ids]
    out: list[torch.optim.Optimizer] = []
    scales = {}
    if fused:
        out.append(fused[0])
        scales[0] = fused[2]
    if name == "sgd":
        out.append(torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay if not sparse else 0))
        return Optimizers(out, scales)
    if sparse:
        if name == "adagrad":
            out.append(torch.optim.Adagrad(sparse, lr=lr))
        else:
            out.append(torch.optim.SparseAdam(sparse, lr=lr))
    if dense:
        if name == "adam":
            out.append(torch.optim.Adam(dense, lr=lr, weight_decay=weight_decay, fused=_fusable(dense)))
        elif name == "rmsprop":
            out.append(torch.optim.RMSprop(dense, lr=lr, weight_decay=weight_decay))
        else:
            out.append(torch.optim.Adagrad(dense, lr=lr, weight_decay=weight_decay))
    return Optimizers(out, scales)

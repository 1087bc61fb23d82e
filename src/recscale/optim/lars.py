"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017, "Large Batch Training of
Convolutional Networks").

Each parameter tensor ("layer") l gets its own rate: the global rate times a trust ratio

    ratio_l = eta * ||w_l|| / (||g_l|| + weight_decay * ||w_l||)

so that a step changes every layer by about the same fraction of its norm, however the gradient
norms differ between, say, an embedding table and the output layer. The update is the paper's
momentum form (as MLPerf's reference LARS):

    v <- momentum * v + lr * ratio_l * (g + weight_decay * w);   w <- w - v

Parameter groups with `adapt=False` use a ratio of 1 (plain SGD with momentum, which with a
constant rate equals torch.optim.SGD's update); `lars_param_groups` puts biases and other 1-d
parameters there, without weight decay, as the paper's successors do (LAMB, MLPerf).
"""

from __future__ import annotations

import torch
from torch import nn


def trust_ratio(weight_norm: torch.Tensor, grad_norm: torch.Tensor, eta: float, weight_decay: float,
                eps: float = 0.0) -> torch.Tensor:
    """The layer's rate multiplier; 1 when either norm is 0 (fresh zero-initialized layers, or
    layers that got no gradient), so that they still move."""
    ratio = eta * weight_norm / (grad_norm + weight_decay * weight_norm + eps)
    return torch.where((weight_norm > 0) & (grad_norm > 0), ratio, torch.ones_like(ratio))


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices (and embedding tables) get the trust ratio and weight decay; biases and other 1-d
    parameters get neither."""
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = [p for p in params if p.ndim > 1]
    vectors = [p for p in params if p.ndim <= 1]
    groups = [{"params": matrices, "weight_decay": weight_decay, "adapt": True}]
    if vectors:
        groups.append({"params": vectors, "weight_decay": 0.0, "adapt": False})
    return groups


class LARS(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 eta: float = 0.001, eps: float = 0.0):
        if lr <= 0 or momentum < 0 or weight_decay < 0 or eta <= 0:
            raise ValueError("LARS needs lr > 0, eta > 0, momentum >= 0 and weight_decay >= 0")
        defaults = {"lr": lr, "momentum": momentum, "weight_decay": weight_decay, "eta": eta, "eps": eps,
                    "adapt": True}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("LARS needs dense gradients (a layer's gradient norm)")
                grad = p.grad
                decay = group["weight_decay"]
                rate = group["lr"]
                if group["adapt"]:
                    rate = rate * trust_ratio(torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad),
                                              group["eta"], decay, group["eps"])
                update = grad.add(p, alpha=decay) if decay else grad.clone()
                update.mul_(rate)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.sub_(state["momentum_buffer"])
        return loss

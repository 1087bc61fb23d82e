"""Fold-in for pairwise models (NeuMF, GMF, MLP, the embedding MLP): a user the model was not
trained on gets user vectors by a few Adam steps on the user's history, every trained weight
frozen (implicit's `recalculate_user`, for models without a closed form).

The objective of each user: the mean binary cross-entropy of its history items (label 1) plus the
mean over a fixed pool of catalog items drawn once from the seed (label 0; pool items in the
history are left out), from the average trained user's vectors. A fixed pool rather than fresh
negatives each step: a user's vectors depend on its history alone, the same in `recommend
--histories`, in evaluation and in the server, in any batch, and the whole procedure is one graph
that export can write (`FoldIn` is that graph).

The gradients are written out (each model's `fold_in_logits` returns its backward) and so is the
update (Adam with one second moment per user, `adam_update` says why), instead of autograd and
torch.optim: an exported graph (ONNX, torch.export) can hold neither, and the server runs
exported graphs only. Tests hold the gradients to autograd's and the steps to the same update
driven by autograd.

    FoldIn(model, n_items, cfg)(items (B, L) int64, mask (B, L) float32) -> (B, D) user vectors

A model's work per step is per user where it can be: the part of a first layer that reads the
item (and the item rows) is computed once for all steps (`fold_in_candidates`), the user's part
once per user and step, and only the layers after it run per (user, item) pair.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from recscale.config.fields import Checked, in_range, option


@dataclasses.dataclass(frozen=True)
class FoldInConfig(Checked):
    """Chosen on the embedded MovieLens data (benchmarks/foldin.py measures the others): past
    about 0.2 of movement in all (steps x rate) held-out ranking gets worse, and 10 steps rank as
    well as 20 at half the rate in half the time. The rate decays linearly to 0 over the steps."""

    steps: int = option(10, "Adam steps on the new user's history", check=in_range(1, 1000, high_inclusive=True))
    lr: float = option(0.02, "the first step's size (then decayed linearly)", check=in_range(0.0, 10.0))
    pool: int = option(256, "catalog items drawn once as the negatives of every new user",
                       check=in_range(1, 1 << 20, high_inclusive=True))
    seed: int = option(0, "seed of the negative pool")


BETAS, EPS = (0.9, 0.999), 1e-12  # torch.optim.Adam's betas


def negative_pool(n_items: int, size: int, seed: int) -> torch.Tensor:
    """(min(size, n_items),) distinct item ids, the same for a seed and catalog size."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_items, generator=g)[:size]


def adam_update(value, grad, first, second, step: int, lr: float):
    """One step of Adam whose second moment is one number per user (the mean square of its
    gradient) rather than one per coordinate; new (value, first moment (B, D), second (B, 1)).

    Why not torch.optim.Adam's per-coordinate second moment: a coordinate whose gradient is float
    rounding (sums that nearly cancel) takes a full-sized step there, in a direction each runtime
    rounds differently (measured on a trained MLP: ONNX Runtime and PyTorch 5e-5 apart after one
    step, 2e-2 after 20). With one scale per user such a coordinate moves as little as its
    gradient is small, and every runtime takes the same steps; the step's length stays Adam's
    (about lr per coordinate)."""
    b1, b2 = BETAS
    first = b1 * first + (1 - b1) * grad  # (B, D)
    second = b2 * second + (1 - b2) * (grad * grad).mean(-1, keepdim=True)  # (B, 1)
    denominator = (second.sqrt() / (1 - b2 ** step) ** 0.5) + EPS
    return value - (lr / (1 - b1 ** step)) * first / denominator, first, second


def sequential_input_gradient(layers, x: torch.Tensor, upstream: torch.Tensor
                              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(output (..., W_out), d(output . upstream)/dx (..., W_in)) of Linear/ReLU/Dropout layers in
    evaluation mode: the backward pass written out (see the module docstring for why)."""
    pre_activations, out = [], x
    for layer in layers:
        if isinstance(layer, nn.Linear):
            out = layer(out)
        elif isinstance(layer, nn.ReLU):
            pre_activations.append(out)
            out = torch.relu(out)
        elif not isinstance(layer, nn.Dropout):  # dropout is the identity in evaluation
            raise TypeError(f"no written-out gradient for {type(layer).__name__}")
    grad = upstream.expand(out.shape)  # (..., W_out)
    for layer in reversed(list(layers)):
        if isinstance(layer, nn.Linear):
            grad = grad @ layer.weight  # (..., W_in)
        elif isinstance(layer, nn.ReLU):
            grad = grad * (pre_activations.pop() > 0)
    return out, grad


def _first_linear(layers) -> nn.Linear | None:
    first = next(iter(layers), None)
    return first if isinstance(first, nn.Linear) else None


def item_part(layers, other: torch.Tensor, user_width: int) -> torch.Tensor:
    """What the first layer of `layers` over [user; other] computes from `other` (B, C, W - H):
    (B, C, L1), the same at every step; `other` itself when there is no first layer."""
    first = _first_linear(layers)
    return other if first is None else other @ first.weight[:, user_width:].T


def user_vjp(layers, user: torch.Tensor, items: torch.Tensor, upstream: torch.Tensor):
    """For Linear/ReLU/Dropout `layers` over [user; item], with the item's part precomputed
    (`item_part`, (B, C, L1)) and user (B, H): (output . upstream (B, C), backward), where
    backward(weights (B, C)) is the gradient of sum(weights * output . upstream) by user, (B, H)."""
    h = user.shape[-1]
    first = _first_linear(layers)
    if first is None:  # no layer: the output is [user; item] itself
        w_user, w_item = upstream[:h], upstream[h:]
        return (user @ w_user)[:, None] + items @ w_item, lambda weights: weights.sum(1, keepdim=True) * w_user
    z = (user @ first.weight[:, :h].T + first.bias)[:, None, :] + items  # (B, C, L1)
    out, grad_z = sequential_input_gradient(list(layers)[1:], z, upstream)  # (B, C, W_out), (B, C, L1)
    return out @ upstream, lambda weights: (weights[..., None] * grad_z).sum(1) @ first.weight[:, :h]


class FoldIn(nn.Module):
    """The fold-in of a pairwise model as one module (exportable): histories -> user vectors.

    The model provides `fold_in_start()` ((D,): where every new user starts),
    `fold_in_candidates(items (B, C))` (what its logits need of the items, computed once) and
    `fold_in_logits(vectors (B, D), candidates)` -> (logits (B, C), backward), backward(weights
    (B, C)) being the gradient of sum(weights * logits) by the vectors, (B, D)."""

    def __init__(self, model: nn.Module, n_items: int, cfg: FoldInConfig | None = None):
        super().__init__()
        self.model, self.cfg = model, cfg or FoldInConfig()
        self.register_buffer("pool", negative_pool(n_items, self.cfg.pool, self.cfg.seed))  # (P,)
        self.register_buffer("start", model.fold_in_start().detach().clone())  # (D,)

    def forward(self, items: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """items (B, L) contiguous ids of each user's history, padded; mask (B, L) 1 where real."""
        b, length = items.shape
        pool = self.pool.expand(b, -1)  # (B, P)
        in_history = ((pool[:, :, None] == items[:, None, :]) & (mask[:, None, :] > 0)).any(-1)  # (B, P)
        negatives = (~in_history).to(mask.dtype)
        # each user's mean over its positives plus its mean over its negatives
        weights = torch.cat([mask / mask.sum(1, keepdim=True).clamp(min=1),
                             negatives / negatives.sum(1, keepdim=True).clamp(min=1)], 1)  # (B, L + P)
        labels = torch.cat([torch.ones_like(mask), torch.zeros_like(negatives)], 1)  # (B, L + P)
        candidates = self.model.fold_in_candidates(torch.cat([items, pool], 1))  # of (B, L + P) items
        vectors = self.start.expand(b, -1)  # (B, D)
        first, second = torch.zeros_like(vectors), torch.zeros_like(vectors[:, :1])
        for step in range(1, self.cfg.steps + 1):
            logits, backward = self.model.fold_in_logits(vectors, candidates)  # (B, L + P)
            # 1 / (1 + exp(-x)), not sigmoid: ONNX Runtime approximates Sigmoid (about 1e-6 off), which the
            # steps would carry on; its Exp is exact to rounding
            grad = backward((1 / (1 + torch.exp(-logits)) - labels) * weights)  # (B, D): d loss / d logit, back
            rate = self.cfg.lr * (1 - (step - 1) / self.cfg.steps)  # decayed linearly: settles, not oscillates
            vectors, first, second = adam_update(vectors, grad, first, second, step, rate)
        return vectors


class VectorScores(nn.Module):
    """A pairwise model's logits from user vectors instead of user ids (what folded-in users are
    scored with): forward(vectors (N, D), items (N,)) -> (N,)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.model.vector_logits(vectors, items)


FOLD_IN_PAIRS = 1 << 17  # (user, item) pairs of one fold-in step: bounds its (pairs, width) activations


def _chunks(sorted_lengths: list[int], pool: int) -> list[slice]:
    """Consecutive slices of users sorted by history length, each within FOLD_IN_PAIRS pairs."""
    chunks, start, total = [], 0, len(sorted_lengths)
    while start < total:
        stop = min(total, start + max(1, FOLD_IN_PAIRS // (pool + sorted_lengths[start])))
        stop = min(stop, start + max(1, FOLD_IN_PAIRS // (pool + sorted_lengths[stop - 1])))
        chunks.append(slice(start, stop))
        start = stop
    return chunks


def padded_items(history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(items (B, L), mask (B, L)) of history rows given as a sparse CSR tensor (B, I), never made
    dense: each row's item ids in item order, then padding (mask 0); L the longest row (>= 1)."""
    crow, col = history.crow_indices(), history.col_indices()
    lengths = torch.diff(crow)  # (B,)
    length = max(1, int(lengths.max())) if lengths.numel() else 1
    rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=col.device), lengths)  # (nnz,)
    position = torch.arange(col.numel(), device=col.device) - crow[rows]
    items = torch.zeros(lengths.numel(), length, dtype=torch.long, device=col.device)
    mask = torch.zeros(lengths.numel(), length, device=col.device)
    items[rows, position], mask[rows, position] = col, 1.0
    return items, mask


class StepFoldIn:
    """What a pairwise model with user tables gains from this module (a mixin of the contract in
    base.py): it scores new users (`fold_in_scorer`) and exports the two graphs that do it. The
    model defines `n_items`, `user_vector(users)`, `vector_logits(vectors, items)`,
    `fold_in_candidates`, `fold_in_logits` (FoldIn) and `vector_catalog_scores(vectors, items)`."""

    fold_in_config = FoldInConfig()

    @property
    def scores_new_users(self) -> bool:
        return True

    def fold_in_start(self) -> torch.Tensor:
        """(D,) the average trained user's vectors: where every new user starts."""
        return self.user_vector(None).mean(0)

    @torch.no_grad()
    def fold_in_vectors(self, history: torch.Tensor) -> torch.Tensor:
        """(B, D) vectors of new users from their (B, I) history rows, dense or sparse CSR (an
        empty row keeps the start). Users go through in order of history length, as many at a
        time as fit in FOLD_IN_PAIRS (user, item) pairs per step: little padding, bounded memory."""
        if history.layout != torch.sparse_csr:
            history = (history > 0).float().to_sparse_csr()
        fold_in = FoldIn(self, self.n_items, self.fold_in_config).to(history.device)
        items, mask = padded_items(history)  # (B, L) each
        lengths = mask.sum(1).long()
        order = torch.argsort(lengths, stable=True)
        order = order[lengths[order] > 0]  # nothing to fit for an empty history
        out = fold_in.start.expand(items.shape[0], -1).clone()  # (B, D)
        for chunk in _chunks(lengths[order].tolist(), fold_in.pool.numel()):
            rows = order[chunk]
            longest = max(1, int(lengths[rows].max()))
            out[rows] = fold_in(items[rows, :longest], mask[rows, :longest])
        return out

    def fold_in_scorer(self, history: torch.Tensor):
        vectors = self.fold_in_vectors(history)
        return lambda items: self.vector_catalog_scores(vectors, items)

    def fold_in_modules(self) -> dict[str, nn.Module]:
        """The graphs export writes for the server: histories -> vectors, (vectors, items) -> scores."""
        return {"fold_in": FoldIn(self, self.n_items, self.fold_in_config), "vector_scores": VectorScores(self)}

"""Mult-VAE and Mult-DAE (Liang et al. 2018; reference code dawenl/vae_cf).

Input: a user's binary interaction row, L2-normalized, with dropout (keep 0.5) while training.
Mult-VAE: I-600-200-600-I with tanh between layers; the encoder's last layer gives the mean and
log-variance of z; z = mu + eps * sigma with eps ~ N(0, I) while training, z = mu for scoring.
Loss (negative ELBO): -mean_u sum_i x_ui log softmax(f(z_u))_i + beta * KL(q(z|x) || N(0, I))
+ lam * sum ||W||^2 over weight matrices (dawenl's `2 * l2_regularizer(lam)`), with beta annealed
by the trainer through `step_schedule`. Mult-DAE: I-200-I, no sampling, no KL.

Sparse input (`sparse_input`, the default), as the VAE-CF reference's "feeding sparse matrix
instead of dense": training batches arrive as CSR slices; the first layer sums the rows of its
(items x width) weight picked by each user's items (`embedding_bag` with the normalized values as
per-sample weights), and the loss is computed from the nonzeros plus one log-sum-exp per user,
sum_i x_ui log softmax_i = sum_{i in u} x_ui logit_i - (sum_i x_ui) logsumexp(logits). Its cost
follows the interactions, not the catalog; loss and gradients equal the dense path's
(tests/models/test_models.py). Dropout then drops nonzeros only, as it does on a dense row.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from recscale.config.fields import Checked, each, in_range, non_negative, option
from recscale.config.run import WIDTH
from recscale.data.loading.batch import UserBatch, UserRows
from recscale.models.base import (
    DataShape,
    LastLayerUsers,
    Output,
    Recommender,
    Retrieval,
    StepSchedule,
    gather_candidates,
    last_layer_items,
)


def kl_beta(step: int, total_anneal_steps: int, anneal_cap: float) -> float:
    """Mult-VAE's KL weight, as dawenl/vae_cf: min(anneal_cap, step / total_anneal_steps). It
    reaches the cap after anneal_cap x total_anneal_steps updates."""
    if total_anneal_steps <= 0:
        return anneal_cap
    return min(anneal_cap, step / total_anneal_steps)


AUTO_ANNEAL_FRACTION = 0.8  # total_anneal_steps = 0: 80% of the run (dawenl's 200,000 on ml-20m is about that)


@dataclasses.dataclass(frozen=True)
class MultVAEConfig(Checked):
    hidden: tuple[int, ...] = option((600,), "encoder widths between the items and the latent layer "
                                     "(the decoder mirrors them)", check=each(WIDTH))
    latent: int = option(200, "width of z", check=WIDTH)
    dropout: float = option(0.5, "input dropout while training", check=in_range(0.0, 1.0))
    lam: float = option(0.0, "L2 weight of the weight matrices", check=non_negative)
    total_anneal_steps: int = option(0, "KL weight grows as step / this (0: 80%% of the run's steps)",
                                     check=non_negative)
    anneal_cap: float = option(0.2, "largest KL weight; reached after anneal_cap x total_anneal_steps steps",
                               check=in_range(0.0, 1.0, high_inclusive=True))
    sparse_input: bool = option(True, "first layer and loss from the nonzeros of each row (same results, "
                                "faster); false: dense rows")


@dataclasses.dataclass(frozen=True)
class MultDAEConfig(Checked):
    hidden: tuple[int, ...] = option((), "widths between the items and the bottleneck", check=each(WIDTH))
    latent: int = option(200, "bottleneck width", check=WIDTH)
    dropout: float = option(0.5, "input dropout while training", check=in_range(0.0, 1.0))
    lam: float = option(0.01 / 500, "L2 weight of the weight matrices (dawenl: 0.01 / batch size)",
                        check=non_negative)
    sparse_input: bool = option(True, "first layer and loss from the nonzeros of each row (same results, "
                                "faster); false: dense rows")


class SparseInputLinear(nn.Module):
    """A linear layer over item rows, stored item-major (items x width) so that a sparse row is a
    weighted sum of weight rows. Dense rows (scoring, the dense path) are a matmul with the same
    weight."""

    def __init__(self, n_items: int, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_items, width))
        self.bias = nn.Parameter(torch.empty(width))

    def dense(self, rows: torch.Tensor) -> torch.Tensor:
        return rows @ self.weight + self.bias  # (B, width)

    def sparse(self, indices: torch.Tensor, offsets: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return F.embedding_bag(indices, self.weight, offsets, mode="sum", per_sample_weights=values) + self.bias


def _init(layers) -> None:
    for layer in layers:  # dawenl: Glorot-uniform weights, N(0, 0.001) biases (Glorot is symmetric in fans)
        nn.init.xavier_uniform_(layer.weight)
        nn.init.trunc_normal_(layer.bias, std=0.001)


def item_stack(widths: list[int]) -> nn.ModuleList:
    """widths[0] items in, then linear layers; the first takes sparse or dense rows."""
    layers = nn.ModuleList([SparseInputLinear(widths[0], widths[1]),
                            *(nn.Linear(a, b) for a, b in zip(widths[1:-1], widths[2:]))])
    _init(layers)
    return layers


def _stack(widths: list[int]) -> nn.ModuleList:
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    _init(layers)
    return layers


def _run(layers, x: torch.Tensor, first_done: bool = False) -> torch.Tensor:
    """Layers with tanh between them (not after the last); `first_done`: x is the first layer's output."""
    for n, layer in enumerate(layers):
        if not (first_done and n == 0):
            x = layer(x)
        if n < len(layers) - 1:
            x = torch.tanh(x)
    return x


def _run_hidden(layers, x: torch.Tensor, first_done: bool = False) -> torch.Tensor:
    """What `_run` feeds its last layer: every layer but the last, each followed by tanh."""
    for n, layer in enumerate(layers[:-1]):
        if not (first_done and n == 0):
            x = layer(x)
        x = torch.tanh(x)
    return x


def segment_sum(values: torch.Tensor, row_of: torch.Tensor, n_rows: int) -> torch.Tensor:
    return torch.zeros(n_rows, dtype=values.dtype, device=values.device).index_add_(0, row_of, values)


class SparseMultinomialNLL(torch.autograd.Function):
    """-(1/B) sum_u sum_{i in u} x_ui log softmax(logits_u)_i from the nonzeros (row_of, indices,
    values). The gradient, (1/B) (sum_i x_ui) softmax(logits_u) - x_u / B, is made in place from the
    saved log-softmax in one pass over the (B, I) logits, plus a scatter at the nonzeros: autograd's
    own would fill a (B, I) zero tensor and make two more passes."""

    @staticmethod
    def forward(ctx, logits, row_of, indices, values):
        log_probs = F.log_softmax(logits, dim=-1)
        ctx.save_for_backward(log_probs, row_of, indices, values)
        return -(log_probs[row_of, indices] * values).sum() / logits.shape[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        log_probs, row_of, indices, values = ctx.saved_tensors
        scale = grad / log_probs.shape[0]
        mass = segment_sum(values, row_of, log_probs.shape[0])
        out = log_probs.exp_().mul_((mass * scale)[:, None])  # the saved tensor is not needed again
        out.index_put_((row_of, indices), -values * scale, accumulate=True)
        return out, None, None, None


def multinomial_nll(logits: torch.Tensor, batch: UserBatch) -> torch.Tensor:
    """-mean over users of sum_i x_ui log softmax(logits)_i, from dense rows or the nonzeros."""
    logits = logits.float()
    if not batch.sparse:
        return -(F.log_softmax(logits, dim=-1) * batch.rows).sum(-1).mean()
    return SparseMultinomialNLL.apply(logits, batch.row_of_nonzeros(), batch.indices, batch.values)


class RowModel(Recommender):
    """What Mult-VAE, Mult-DAE and the autoencoder share: user rows in, the catalog out."""

    needs_history = True
    throughput_unit = "users"
    binary_rows = True  # rows hold 1/0 (else the ratings)
    train_defaults = {"batch_size": 500, "lr": 1e-3, "epochs": 200, "optimizer": "adam", "patience": 20}
    tune_space = {
        "hidden": {"type": "categorical", "choices": [[200], [600], [600, 200]]},
        "lr": {"type": "log", "low": 1e-4, "high": 1e-2},
        "dropout": {"type": "uniform", "low": 0.0, "high": 0.7},
        "batch_size": {"type": "categorical", "choices": [100, 250, 500]},
    }

    @classmethod
    def default_train_settings(cls, counts):
        # The paper's 500 users per batch on ml-20m's 116k training users; about 8 steps per epoch
        # at least on small data (ml-latest-small: 66), so that 200 epochs are enough updates.
        users = counts.get("train_users", counts["users"])
        return {**cls.train_defaults, "batch_size": int(min(500, max(32, users // 8)))}

    @property
    def batch_kind(self) -> UserRows:
        return UserRows(binary=self.binary_rows, sparse=self.cfg.sparse_input)

    def _first(self) -> SparseInputLinear:
        raise NotImplementedError

    def id_axes(self) -> dict[str, tuple[int, ...]]:
        """The item axis of the first layer's (I, w) weight and of the last layer's (I, d) weight
        and (I,) bias: a grown catalog adds input and output units, the layers between keep theirs."""
        key = {id(p): name for name, p in self.named_parameters()}
        first, last = self._first(), self._output_layer()
        return {key[id(first.weight)]: (0,), key[id(last.weight)]: (0,), key[id(last.bias)]: (0,)}

    def _encode_input(self, batch: UserBatch) -> torch.Tensor:
        """The first layer's output for the L2-normalized, dropped-out rows of the batch."""
        first = self._first()
        if not batch.sparse:
            x = F.dropout(F.normalize(batch.rows, dim=-1), self.cfg.dropout, training=self.training)
            return first.dense(x)
        row_of = batch.row_of_nonzeros()
        norms = segment_sum(batch.values * batch.values, row_of, len(batch)).sqrt().clamp_min(1e-12)
        values = F.dropout(batch.values / norms[row_of], self.cfg.dropout, training=self.training)
        return first.sparse(batch.indices, batch.offsets, values)

    def retrieval(self) -> Retrieval:
        """The scores are a linear last layer (through a monotonic sigmoid for the autoencoder):
        [hidden, 1] . [W_i, b_i]."""
        return Retrieval(LastLayerUsers(self._before_output), last_layer_items(self._output_layer()))

    def _before_output(self, history: torch.Tensor) -> torch.Tensor:
        """(B, d) the last layer's input for dense history rows (eval mode)."""
        users = torch.zeros(history.shape[0], dtype=torch.int64, device=history.device)
        return self._hidden(UserBatch(users, history))

    def _hidden(self, batch: UserBatch) -> torch.Tensor:
        """(B, d) the last layer's input for the batch's rows, dense or sparse (eval mode)."""
        raise NotImplementedError

    def _output_layer(self) -> nn.Linear:
        raise NotImplementedError

    def _activation(self, logits: torch.Tensor) -> torch.Tensor:
        """What follows the last layer in `score` (nothing; the autoencoder's sigmoid)."""
        return logits

    def catalog_scorer(self, users, history):
        """The hidden layer once for the batch, then the last layer on each block of items; a
        sparse CSR history goes through the first layer's sparse path (never made dense)."""
        if history.layout == torch.sparse_csr:
            crow = history.crow_indices()
            batch = UserBatch(users, indices=history.col_indices(), offsets=crow[:-1], values=history.values())
        else:
            batch = UserBatch(users, history)
        hidden = self._hidden(batch)  # (B, d)
        last = self._output_layer()

        def block(items: slice | torch.Tensor) -> torch.Tensor:
            return self._activation(F.linear(hidden, last.weight[items], last.bias[items]))  # (B, b)
        return block

    def _l2(self) -> torch.Tensor | float:
        if self.cfg.lam == 0:
            return 0.0
        return self.cfg.lam * sum((m.weight ** 2).sum() for m in self.modules()
                                  if isinstance(m, (nn.Linear, SparseInputLinear)))


class MultVAE(RowModel):
    Config = MultVAEConfig
    tune_space = {**RowModel.tune_space, "anneal_cap": {"type": "uniform", "low": 0.05, "high": 0.5}}

    def __init__(self, shape: DataShape, cfg: MultVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else self.Config()
        self.encoder = item_stack([shape.n_items, *cfg.hidden, 2 * cfg.latent])
        self.decoder = _stack([cfg.latent, *reversed(cfg.hidden), shape.n_items])

    def _first(self) -> SparseInputLinear:
        return self.encoder[0]

    def step_schedule(self, total_steps: int) -> StepSchedule:
        """beta = min(anneal_cap, step / total_anneal_steps); the objective is settled once beta
        reaches the cap."""
        anneal = self.cfg.total_anneal_steps or max(1, int(AUTO_ANNEAL_FRACTION * total_steps))
        cap = self.cfg.anneal_cap
        return StepSchedule(lambda step: {"beta": kl_beta(step, anneal, cap)}, math.ceil(cap * anneal))

    def _latent(self, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _run(self.encoder, first, first_done=True)  # (B, 2L)
        return h[:, :self.cfg.latent], h[:, self.cfg.latent:]  # mu, logvar

    def forward(self, batch: UserBatch, beta: float = 0.0, eps: torch.Tensor | None = None, **schedule) -> Output:
        mu, logvar = self._latent(self._encode_input(batch))
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        z = mu + eps * std if self.training else mu
        logits = _run(self.decoder, z)  # (B, I)
        kl = (0.5 * (-logvar + logvar.exp() + mu ** 2 - 1).sum(-1)).mean()
        return Output(multinomial_nll(logits, batch) + beta * kl + self._l2(), logits)

    def score(self, users, history, items=None):
        mu, _ = self._latent(self._encode_input(UserBatch(users, history)))
        return gather_candidates(_run(self.decoder, mu), items)

    def _hidden(self, batch: UserBatch) -> torch.Tensor:
        mu, _ = self._latent(self._encode_input(batch))
        return _run_hidden(self.decoder, mu)

    def _output_layer(self) -> nn.Linear:
        return self.decoder[-1]


class MultDAE(RowModel):
    Config = MultDAEConfig

    def __init__(self, shape: DataShape, cfg: MultDAEConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else self.Config()
        self.layers = item_stack([shape.n_items, *cfg.hidden, cfg.latent, *reversed(cfg.hidden), shape.n_items])

    def _first(self) -> SparseInputLinear:
        return self.layers[0]

    def _logits(self, batch: UserBatch) -> torch.Tensor:
        return _run(self.layers, self._encode_input(batch), first_done=True)

    def forward(self, batch: UserBatch, **schedule) -> Output:
        logits = self._logits(batch)
        return Output(multinomial_nll(logits, batch) + self._l2(), logits)

    def score(self, users, history, items=None):
        return gather_candidates(self._logits(UserBatch(users, history)), items)

    def _hidden(self, batch: UserBatch) -> torch.Tensor:
        return _run_hidden(self.layers, self._encode_input(batch), first_done=True)

    def _output_layer(self) -> nn.Linear:
        return self.layers[-1]

"""Mult-VAE and Mult-DAE (Liang et al. 2018; reference code dawenl/vae_cf).

Input: a user's binary interaction row, L2-normalized, with dropout (keep 0.5) while training.
Mult-VAE: I-600-200-600-I with tanh between layers; the encoder's last layer gives the mean and
log-variance of z; z = mu + eps * sigma with eps ~ N(0, I) while training, z = mu for scoring.
Loss (negative ELBO): -mean_u sum_i x_ui log softmax(f(z_u))_i + beta * KL(q(z|x) || N(0, I))
+ lam * sum ||W||^2 over weight matrices (dawenl's `2 * l2_regularizer(lam)`), with beta annealed
by the trainer (optim.schedules.kl_beta). Mult-DAE: I-200-I, no sampling, no KL.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from recscale.data.batch import UserBatch
from recscale.models.base import DataShape, Output, Recommender


@dataclasses.dataclass(frozen=True)
class MultVAEConfig:
    hidden: tuple[int, ...] = (600,)
    latent: int = 200
    dropout: float = 0.5
    lam: float = 0.0
    total_anneal_steps: int = 0  # 0: auto, 80% of the run's steps (dawenl's 200,000 on ml-20m is about that)
    anneal_cap: float = 0.2


@dataclasses.dataclass(frozen=True)
class MultDAEConfig:
    hidden: tuple[int, ...] = ()
    latent: int = 200
    dropout: float = 0.5
    lam: float = 0.01 / 500  # dawenl: 0.01 / batch size


def _stack(widths: list[int]) -> nn.ModuleList:
    layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
    for layer in layers:  # dawenl: Glorot-uniform weights, N(0, 0.001) biases
        nn.init.xavier_uniform_(layer.weight)
        nn.init.trunc_normal_(layer.bias, std=0.001)
    return layers


def _run(layers: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    for n, layer in enumerate(layers):
        x = layer(x)
        if n < len(layers) - 1:
            x = torch.tanh(x)
    return x


def multinomial_nll(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """-mean over users of sum_i x_ui log softmax(logits)_i."""
    return -(F.log_softmax(logits.float(), dim=-1) * rows).sum(-1).mean()


class _RowModel(Recommender):
    batch_kind = "rows"
    needs_history = True
    train_defaults = {"batch_size": 500, "lr": 1e-3, "epochs": 200, "optimizer": "adam", "patience": 20}

    @classmethod
    def default_train_settings(cls, counts):
        # The paper's 500 users per batch on ml-20m's 116k training users; about 8 steps per epoch
        # at least on small data (ml-latest-small: 66), so that 200 epochs are enough updates.
        users = counts.get("train_users", counts["users"])
        return {**cls.train_defaults, "batch_size": int(min(500, max(32, users // 8)))}

    def _input(self, rows: torch.Tensor) -> torch.Tensor:
        x = F.normalize(rows, dim=-1)
        return F.dropout(x, self.cfg.dropout, training=self.training)

    def _l2(self) -> torch.Tensor:
        return sum((m.weight ** 2).sum() for m in self.modules() if isinstance(m, nn.Linear))


class MultVAE(_RowModel):
    Config = MultVAEConfig

    def __init__(self, shape: DataShape, cfg: MultVAEConfig = MultVAEConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = _stack([shape.n_items, *cfg.hidden, 2 * cfg.latent])
        self.decoder = _stack([cfg.latent, *reversed(cfg.hidden), shape.n_items])

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = _run(self.encoder, self._input(rows))  # (B, 2L)
        return h[:, :self.cfg.latent], h[:, self.cfg.latent:]  # mu, logvar

    def forward(self, batch: UserBatch, beta: float = 0.0, eps: torch.Tensor | None = None, **schedule) -> Output:
        mu, logvar = self.encode(batch.rows)
        std = torch.exp(0.5 * logvar)
        if eps is None:
            eps = torch.randn_like(std)
        z = mu + eps * std if self.training else mu
        logits = _run(self.decoder, z)  # (B, I)
        kl = (0.5 * (-logvar + logvar.exp() + mu ** 2 - 1).sum(-1)).mean()
        loss = multinomial_nll(logits, batch.rows) + beta * kl + self.cfg.lam * self._l2()
        return Output(loss, logits)

    def score(self, users, history, items=None):
        mu, _ = self.encode(history)
        logits = _run(self.decoder, mu)
        return logits if items is None else torch.gather(logits, 1, items)


class MultDAE(_RowModel):
    Config = MultDAEConfig

    def __init__(self, shape: DataShape, cfg: MultDAEConfig = MultDAEConfig()):
        super().__init__()
        self.cfg = cfg
        widths = [shape.n_items, *cfg.hidden, cfg.latent, *reversed(cfg.hidden), shape.n_items]
        self.layers = _stack(widths)

    def forward(self, batch: UserBatch, **schedule) -> Output:
        logits = _run(self.layers, self._input(batch.rows))
        return Output(multinomial_nll(logits, batch.rows) + self.cfg.lam * self._l2(), logits)

    def score(self, users, history, items=None):
        logits = _run(self.layers, self._input(history))
        return logits if items is None else torch.gather(logits, 1, items)

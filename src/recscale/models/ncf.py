"""GMF, MLP and NeuMF (He et al. 2017), with NVIDIA DeepLearningExamples' defaults.

NeuMF is composed as TorchRec's DLRM is: one collection of embedding tables (the sparse part,
shardable), a GMF tower (element-wise product of user and item factors) and an MLP tower (over the
concatenated user and item embeddings), and one linear head over what the towers give; trained
with binary cross-entropy on positives and sampled negatives. GMF and MLP compose one tower alone
with the head: the three are one `PairTowers` model, each declaring the towers it composes and
taking only the settings they use.

Embedding tables can emit sparse gradients (`embedding_gradients="sparse"`): at ml-20m's shape a
dense optimizer would touch every one of the 165k rows each step. When a batch touches more rows
than the tables hold, dense is faster; "auto" is decided by `resolve_config` from the batch size
(the rule measured in BENCHMARKS.md), and is dense under DDP (NCCL cannot all-reduce sparse
gradients) and under LARS (it needs each table's gradient norm). A model built with "auto"
unresolved uses dense gradients.

NeuMF can start from trained GMF and MLP runs (`pretrained_gmf`, `pretrained_mlp`), as in the paper.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from recscale.config.fields import Checked, ConfigError, each, in_range, option
from recscale.config.run import WIDTH
from recscale.data.loading.batch import PairBatch, Pairs
from recscale.errors import RecscaleError
from recscale.models.base import (
    DataShape,
    FitContext,
    Output,
    PairScores,
    Recommender,
    Retrieval,
    score_pairs_in_chunks,
)
from recscale.models.foldin import StepFoldIn, item_part, user_vjp
from recscale.models.tables import EmbeddingTables, TableSpec, rename_legacy_keys

CATALOG_BLOCK_PAIRS = 1 << 14  # pairs per block of full-catalog scoring: (16k, 256) floats, 16 MiB


# The settings of the towers; a function each, since one dataclass field cannot serve three classes.
def _factors():
    return option(64, "GMF predictive factors", check=WIDTH)


def _layers():
    return option((256, 256, 128, 64), "MLP tower widths; the first is the concatenated user+item embedding "
                  "width (even)", check=each(WIDTH, allow_empty=False))


def _dropout():
    return option(0.0, "dropout after each tower layer", check=in_range(0.0, 1.0))


def _embedding_gradients():
    return option("auto", "sparse, dense, or auto (sparse iff 2 x batch < users + items)",
                  choices=("auto", "sparse", "dense"))


def _check_even_input(layers: tuple[int, ...]) -> None:
    if layers[0] % 2:
        raise ConfigError("layers", f"the first width is split between user and item embeddings; "
                          f"it must be even, got {layers[0]}")


@dataclasses.dataclass(frozen=True)
class GMFConfig(Checked):
    factors: int = _factors()
    embedding_gradients: str = _embedding_gradients()


@dataclasses.dataclass(frozen=True)
class MLPConfig(Checked):
    layers: tuple[int, ...] = _layers()
    dropout: float = _dropout()
    embedding_gradients: str = _embedding_gradients()

    def relations(self) -> None:
        _check_even_input(self.layers)


@dataclasses.dataclass(frozen=True)
class NeuMFConfig(Checked):
    factors: int = _factors()
    layers: tuple[int, ...] = _layers()
    dropout: float = _dropout()
    embedding_gradients: str = _embedding_gradients()
    pretrained_gmf: str = option("", "run directory of a trained gmf to initialize from")
    pretrained_mlp: str = option("", "run directory of a trained mlp to initialize from")

    def relations(self) -> None:
        _check_even_input(self.layers)
        if bool(self.pretrained_gmf) != bool(self.pretrained_mlp):
            raise ConfigError("pretrained_gmf", "give both pretrained_gmf and pretrained_mlp")


COMMON_SPACE = {
    "lr": {"type": "log", "low": 1e-4, "high": 1e-2},
    "negatives": {"type": "int", "low": 2, "high": 8},
    "weight_decay": {"type": "categorical", "choices": [0.0, 1e-6, 1e-5]},
    "batch_size": {"type": "categorical", "choices": [1024, 4096, 16384]},
}
FACTORS_SPACE = {"factors": {"type": "int", "low": 8, "high": 128, "log": True}}
TOWER_SPACE = {
    "layers": {"type": "categorical", "choices": [[64, 32, 16], [128, 64, 32], [256, 128, 64], [256, 256, 128, 64]]},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5},
}


class PairTowers(StepFoldIn, Recommender):
    """Embedding tables, the towers a model names in `composition` (in the head's input order) and
    one linear head over their concatenated outputs. GMF, MLP and NeuMF below are its compositions.
    A user absent from training is folded in (foldin.py): its vectors, the rows of the user tables
    side by side ((D,) = [gmf_user; mlp_user]), are fitted to its history."""

    composition: tuple[str, ...] = ()
    train_defaults = {"batch_size": 4096, "lr": 0.002, "epochs": 20, "optimizer": "adam"}

    @classmethod
    def resolve_config(cls, cfg, context: FitContext):
        """'auto' embedding gradients -> sparse when a batch (users and items, 2 rows per example)
        touches fewer rows than the tables hold, dense otherwise, and always under DDP and LARS."""
        if cfg.embedding_gradients != "auto":
            return cfg
        if context.world_size > 1 or context.optimizer == "lars":
            return dataclasses.replace(cfg, embedding_gradients="dense")
        sparse = 2 * context.local_batch_size < context.n_users + context.n_items
        return dataclasses.replace(cfg, embedding_gradients="sparse" if sparse else "dense")

    batch_kind = Pairs()

    def __init__(self, shape: DataShape, cfg=None):
        super().__init__()
        cfg = cfg if cfg is not None else self.Config()
        self.cfg = cfg
        use_gmf, use_mlp = "gmf" in self.composition, "mlp" in self.composition
        specs = {}
        if use_gmf:
            specs |= {"gmf_user": TableSpec("users", shape.n_users, cfg.factors),
                      "gmf_item": TableSpec("items", shape.n_items, cfg.factors)}
        if use_mlp:
            half = cfg.layers[0] // 2
            specs |= {"mlp_user": TableSpec("users", shape.n_users, half),
                      "mlp_item": TableSpec("items", shape.n_items, half)}
        self.tables = EmbeddingTables(specs, sparse=cfg.embedding_gradients == "sparse")  # N(0, 0.01) as NVIDIA's NCF
        self._register_load_state_dict_pre_hook(rename_legacy_keys("tables", specs))
        # the towers, named by the prefix of their tables, built after the tables (the order their
        # parameters are drawn and listed in); parameter names are those of the older single-class
        # NeuMF (tables.*, tower.*, head.*), so its checkpoints load unchanged
        self.gmf = GMFTower() if use_gmf else None
        self.tower = MLPTower(cfg.layers, cfg.dropout) if use_mlp else None
        head_in = (cfg.factors if self.gmf is not None else 0) + (cfg.layers[-1] if self.tower is not None else 0)
        self.head = nn.Linear(head_in, 1)
        self.reset_parameters()

    def towers(self) -> list[tuple[str, nn.Module]]:
        """(table prefix, tower) of the towers this model composes, in the head's input order."""
        return [(name, tower) for name, tower in (("gmf", self.gmf), ("mlp", self.tower)) if tower is not None]

    def id_axes(self) -> dict[str, tuple[int, ...]]:
        return self.tables.id_axes("tables")

    def reset_parameters(self) -> None:
        # As NVIDIA's NCF: N(0, 0.01) embeddings (EmbeddingTables), Glorot-uniform tower, LeCun-uniform head.
        if self.tower is not None:
            self.tower.reset_parameters()
        bound = (3.0 / self.head.in_features) ** 0.5
        nn.init.uniform_(self.head.weight, -bound, bound)
        nn.init.zeros_(self.head.bias)

    def logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Logits for equally shaped user and item index tensors."""
        return self._head(self.tables({"users": users, "items": items}))

    def _head(self, e: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [tower(e[f"{name}_user"], e[f"{name}_item"]) for name, tower in self.towers()]  # (..., F), (..., L)
        return self.head(torch.cat(parts, -1) if len(parts) > 1 else parts[0]).squeeze(-1)

    # ------------------------------------------------------------ user vectors (fold-in, foldin.py)

    @property
    def n_items(self) -> int:
        return self._n_items()

    def _user_tables(self) -> list[str]:
        return [name for name, spec in self.tables.specs.items() if spec.feature == "users"]

    def user_vector(self, users: torch.Tensor | None) -> torch.Tensor:
        """(..., D) the user tables' rows of `users` side by side (None: every user)."""
        return torch.cat([self.tables[name].weight if users is None else self.tables[name].weight[users]
                          for name in self._user_tables()], -1)

    def _with_vectors(self, vectors: torch.Tensor, items: torch.Tensor | slice) -> dict[str, torch.Tensor]:
        """Table rows as `tables` gives them, the user rows cut from `vectors` (..., D)."""
        names = self._user_tables()
        widths = [self.tables.specs[name].dim for name in names]
        rows = dict(zip(names, torch.split(vectors, widths, -1)))
        return rows | {name: self.tables[name].weight[items] for name, spec in self.tables.specs.items()
                       if spec.feature == "items"}

    def vector_logits(self, vectors: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(N,) logits of user vectors (N, D) with items (N,): `logits` for a user given as vectors."""
        return self._head(self._with_vectors(vectors, items))

    def fold_in_candidates(self, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """What each tower reads of the items (B, C), computed once for every fold-in step."""
        return {name: tower.fold_in_items(self.tables[f"{name}_item"].weight[items]) for name, tower in self.towers()}

    def fold_in_logits(self, vectors: torch.Tensor, candidates: dict[str, torch.Tensor]):
        """(logits (B, C), backward) of users given as vectors (B, D) against their candidates:
        each tower's share of the head and its user gradient, written out (foldin.py)."""
        names = self._user_tables()
        users = dict(zip(names, torch.split(vectors, [self.tables.specs[n].dim for n in names], -1)))
        head, logits, backwards, offset = self.head.weight[0], self.head.bias, {}, 0
        for name, tower in self.towers():
            width = self.cfg.factors if name == "gmf" else self.cfg.layers[-1]
            share, backwards[name] = tower.fold_in(users[f"{name}_user"], candidates[name], head[offset:offset + width])
            logits = logits + share  # (B, C)
            offset += width
        return logits, lambda weights: torch.cat([backwards[n.removesuffix("_user")](weights) for n in names], -1)

    def vector_catalog_scores(self, vectors: torch.Tensor, items: slice | torch.Tensor) -> torch.Tensor:
        """(B, b) scores of users given as vectors (B, D) for `items` (a slice or ids)."""
        return self._catalog_scores(self._with_vectors(vectors, items))

    def forward(self, batch: PairBatch, **schedule) -> Output:
        logits = self.logits(batch.users, batch.items)  # (B,)
        return Output(F.binary_cross_entropy_with_logits(logits.float(), batch.labels), logits)

    def score(self, users, history, items=None):
        if items is None and isinstance(self.tables, EmbeddingTables):  # TorchRec's tables: by pairs
            return self.vector_catalog_scores(self.user_vector(users), slice(None))  # (B, I)
        return score_pairs_in_chunks(self.logits, users, items, self._n_items())  # (B, C)

    def catalog_scorer(self, users, history):
        if not isinstance(self.tables, EmbeddingTables):
            return super().catalog_scorer(users, history)
        return lambda items: self.vector_catalog_scores(self.user_vector(users), items)

    def _catalog_scores(self, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, b) scores of the item rows in `rows` for its (B, .) user rows (`_with_vectors`). The head is linear and so
        is the tower's first layer, whose input is [user; item]: W [u; i] + b = (W_u u + b) + W_i i is computed once per user and once
        per item instead of once per pair, and the GMF part of the head is one (B, F) x (F, I)
        product. The same scores as `logits` up to float rounding, 2-2.5x faster on CPU (the
        first layer is most of NeuMF's work); the rest of the tower runs on blocks of
        CATALOG_BLOCK_PAIRS pairs, so memory stays bounded."""
        n_users, n_items = next(iter(rows.values())).shape[0], rows[next(
            name for name, spec in self.tables.specs.items() if spec.feature == "items")].shape[0]
        head = self.head.weight[0]  # (F + L,) in the towers' order
        scores = self.head.bias.expand(n_users, n_items).clone()  # (B, I)
        if self.gmf is not None:
            f = self.cfg.factors
            scores += (rows["gmf_user"] * head[:f]) @ rows["gmf_item"].T  # (B, I)
            head = head[f:]
        if self.tower is None:
            return scores
        half = self.cfg.layers[0] // 2
        if len(self.tower) == 0:  # no hidden layer: the head reads [user; item] itself
            return scores + (rows["mlp_user"] @ head[:half])[:, None] + rows["mlp_item"] @ head[half:]
        first, rest = self.tower[0], self.tower[1:]
        user_part = rows["mlp_user"] @ first.weight[:, :half].T + first.bias  # (B, L1)
        item_part = rows["mlp_item"] @ first.weight[:, half:].T  # (I, L1)
        step = max(1, CATALOG_BLOCK_PAIRS // item_part.shape[0])
        for s in range(0, n_users, step):
            hidden = rest(torch.relu(user_part[s:s + step, None, :] + item_part))  # (b, I, L)
            scores[s:s + step] += hidden @ head  # (b, I)
        return scores

    def scoring_module(self) -> nn.Module:
        return PairScores(self.logits)

    @property
    def scoring_kind(self) -> str:
        return "pairs"

    def retrieval(self) -> Retrieval | None:
        """GMF's score h . (p_u * q_i) + b is the inner product of (h * p_u) and q_i; NeuMF and MLP
        mix user and item in the tower before scoring, so no index can rank for them."""
        if self.tower is not None:
            return None
        return Retrieval(_GMFUsers(self), self.tables["gmf_item"].weight.detach())

    def _n_items(self) -> int:
        return next(s.rows for s in self.tables.specs.values() if s.feature == "items")


class GMFTower(nn.Module):
    """GMF (He et al. 2017): the element-wise product of the user's and the item's factors."""

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return user * item  # (..., F)

    def fold_in_items(self, item: torch.Tensor) -> torch.Tensor:
        return item  # (B, C, F)

    def fold_in(self, user: torch.Tensor, item: torch.Tensor, upstream: torch.Tensor):
        """(output . upstream (B, C), backward: weights (B, C) -> (B, F)) for users (B, F)."""
        return (user[:, None, :] * item) @ upstream, lambda weights: (weights[..., None] * item).sum(1) * upstream


class MLPTower(nn.Sequential):
    """The MLP tower over the concatenated user and item embeddings: Linear + ReLU (+ dropout) for
    each pair of consecutive `widths`; the first width is the concatenated embedding's."""

    def __init__(self, widths: tuple[int, ...], dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        super().__init__(*layers)

    def __getitem__(self, index):
        # a slice of the tower is a plain Sequential (nn.Sequential would call this __init__ with it)
        return nn.Sequential(*list(self)[index]) if isinstance(index, slice) else super().__getitem__(index)

    def reset_parameters(self) -> None:
        for layer in self:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([user, item], -1))  # (..., widths[-1])

    def fold_in_items(self, item: torch.Tensor) -> torch.Tensor:
        return item_part(self, item, item.shape[-1])  # (B, C, L1): the user's half is as wide

    def fold_in(self, user: torch.Tensor, item: torch.Tensor, upstream: torch.Tensor):
        return user_vjp(self, user, item, upstream)


# Older runs recorded every setting of the three (they were one class with a `branches` flag);
# reading such a run drops what its model does not use.
NCF_SETTINGS = ("branches", "factors", "layers", "dropout", "pretrained_gmf", "pretrained_mlp")


class GMF(PairTowers):
    """The GMF tower alone under the head: h . (p_u * q_i) + b."""

    Config = GMFConfig
    composition = ("gmf",)
    tune_space = {**FACTORS_SPACE, **COMMON_SPACE}
    retired_settings = tuple(k for k in NCF_SETTINGS if k != "factors")


class MLP(PairTowers):
    """The MLP tower alone over [p_u; q_i], under the head."""

    Config = MLPConfig
    composition = ("mlp",)
    tune_space = {**TOWER_SPACE, **COMMON_SPACE}
    retired_settings = tuple(k for k in NCF_SETTINGS if k not in ("layers", "dropout"))


class NeuMF(PairTowers):
    """The GMF and MLP towers side by side under one head; it can start from trained GMF and MLP
    runs, as in the paper."""

    Config = NeuMFConfig
    composition = ("gmf", "mlp")
    # in the order of the space before GMF and MLP had their own, so that a seeded study draws the same
    tune_space = {"factors": FACTORS_SPACE["factors"], "layers": TOWER_SPACE["layers"], "lr": COMMON_SPACE["lr"],
                  "negatives": COMMON_SPACE["negatives"], "dropout": TOWER_SPACE["dropout"],
                  "weight_decay": COMMON_SPACE["weight_decay"], "batch_size": COMMON_SPACE["batch_size"]}
    retired_settings = ("branches",)

    @classmethod
    def pretrained_runs(cls, cfg: NeuMFConfig) -> dict[str, str]:
        return {"gmf": cfg.pretrained_gmf, "mlp": cfg.pretrained_mlp} if cfg.pretrained_gmf else {}

    def init_from_pretrained(self, models: dict[str, Recommender]) -> None:
        for role, kind in (("gmf", GMF), ("mlp", MLP)):
            if type(models[role]) is not kind:
                raise RecscaleError(f"--pretrained-{role}: {self.pretrained_runs(self.cfg)[role]} is not a {role} run")
        try:
            self.load_pretrained(models["gmf"], models["mlp"])
        except RuntimeError as exc:
            raise RecscaleError(f"--pretrained-gmf/--pretrained-mlp: shapes differ from this model's "
                                f"(factors, layers, dataset): {str(exc).splitlines()[0]}") from None

    @torch.no_grad()
    def load_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> None:
        """Initialize from trained GMF and MLP models as in the paper: copy their embeddings and
        tower, and concatenate their heads weighted by alpha and 1 - alpha."""
        if not (type(gmf) is GMF and type(mlp) is MLP):
            raise RecscaleError("load_pretrained needs a trained gmf and a trained mlp")
        for name in ("gmf_user", "gmf_item"):
            self.tables[name].weight.copy_(gmf.tables[name].weight)
        for name in ("mlp_user", "mlp_item"):
            self.tables[name].weight.copy_(mlp.tables[name].weight)
        self.tower.load_state_dict(mlp.tower.state_dict())
        self.head.weight.copy_(torch.cat([alpha * gmf.head.weight, (1 - alpha) * mlp.head.weight], 1))
        self.head.bias.copy_(alpha * gmf.head.bias + (1 - alpha) * mlp.head.bias)


class _GMFUsers(nn.Module):
    def __init__(self, model: PairTowers):
        super().__init__()
        self.model = model

    def forward(self, users: torch.Tensor) -> torch.Tensor:
        return self.model.tables["gmf_user"](users) * self.model.head.weight[0]  # (B, F)

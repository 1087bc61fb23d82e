"""The one interface every model follows; the trainer, evaluation and the CLI only ask through it.

    forward(batch, **schedule) -> Output     the training loss (DDP sees every parameter)
    score(users, history, items=None)        higher is better; (B, I) or (B, C) for candidates
    catalog_scorer(users, history)           scores of the catalog a block of items at a time:
                                             items (a slice or ids) -> (B, b), with the work every
                                             block shares done once: how a catalog whose (B, I)
                                             scores are too large to hold at once is ranked
    fold_in_scorer(history)                  the same for users absent from training, from their
                                             (B, I) history rows alone, for models with per-user
                                             parameters: pairwise models fit user vectors to them
                                             (foldin.py); history models need none (their
                                             catalog_scorer reads any user's rows)

What a model declares about itself (the trainer never tests a model's name or type):

    Config                  its frozen, checked hyperparameter dataclass; the defaults are valid
    train_defaults          its sensible run settings (the papers' values); `default_train_settings`
                            scales them to the dataset's counts
    resolve_config(cfg, c)  settings left to 'auto', decided against the data and the run (FitContext)
    batch_kind              what its training batches are (data/loading/batch.py: Pairs, UserRows,
                            TabularRows); the trainer asks the loading factory for them. None: no steps
    step_schedule(n)        keyword arguments of forward at each step (KL annealing) and the step
                            from which the objective is settled (early stopping counts from there)
    pretrained_runs(cfg)    run directories to initialize from; `init_from_pretrained` uses them
    needs_history           `score` reads the (B, I) dense rows of what each user interacted with
                            (training rows, or the fold-in rows of held-out users); else None
    scores_new_users        it can rank for users absent from training (`fold_in_scorer`);
                            evaluation counts the others as not scored, recommend falls back
    closed_form             fitted by `fit(user_items)` (a coalesced sparse COO tensor), not by steps
    throughput_unit         what its training throughput counts (samples or users)
    tune_space              `recscale tune`'s default search space (tuning/space.py's form); {}: none
    retired_settings        settings older runs of it recorded that it no longer takes (dropped when
                            such a run or config file is read, never accepted from the user)
    scoring_module()        its scoring as a module for export: forward(history) -> (B, I) for models
                            that read a history ("rows"), forward(users, items) -> (N,) for pairwise
                            models ("pairs"); None when the bundle's data is enough (popularity)
    fold_in_modules()       the graphs export writes so that the server folds in new users of a
                            pairwise model (foldin.py: "fold_in", "vector_scores"); {}: none needed
    id_axes()               the axes of its state-dict tensors indexed by user, item or genre ids: what
                            grows when a warm start (`grow_from`) moves it to an extended dataset
    retrieval()             where the score is a dot product of a user vector and item vectors (plus
                            terms equal for every item): a module for the user vectors (same inputs
                            as the scoring module) and the (I, d) item vectors; None otherwise

Schedules come in as keyword arguments from the trainer: a model keeps no step counters, opens no
files and picks no device. Constructors take the dataset's shape (`DataShape`, built from meta.json
by the caller) and the model's Config.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple

import torch
from torch import nn

from recscale.data.loading.batch import BatchKind
from recscale.errors import RecscaleError
from recscale.models.growth import grow_from


@dataclasses.dataclass(frozen=True)
class DataShape:
    n_users: int
    n_items: int
    user_dim: int = 32          # suggested embedding sizes (meta.json's rule)
    item_dim: int = 32
    n_genres: int = 0
    genre_dim: int = 16
    genre_values: torch.Tensor | None = None   # (nnz,) every item's genres, for nn.EmbeddingBag
    genre_offsets: torch.Tensor | None = None  # (I,)


@dataclasses.dataclass(frozen=True)
class FitContext:
    """What a model's config resolution may depend on besides its own settings."""

    n_users: int
    n_items: int
    local_batch_size: int = 1   # examples per step and process
    world_size: int = 1
    optimizer: str = "adam"


def no_schedule(step: int) -> dict:
    return {}


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Per-step keyword arguments of `forward`, and the first step at which the objective stops
    changing (before it, validation metrics of different epochs measure different objectives, so
    early stopping waits)."""

    kwargs: Callable[[int], dict] = no_schedule
    settled_step: int = 0


class Output(NamedTuple):
    loss: torch.Tensor
    logits: torch.Tensor | None = None


class Recommender(nn.Module):
    Config: ClassVar[type]
    needs_history: ClassVar[bool] = False
    closed_form: ClassVar[bool] = False
    throughput_unit: ClassVar[str] = "samples"
    train_defaults: ClassVar[dict[str, Any]] = {}
    tune_space: ClassVar[dict[str, dict]] = {}
    retired_settings: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def default_train_settings(cls, counts: dict[str, int]) -> dict[str, Any]:
        """`train_defaults`, scaled to the dataset's counts (meta.json) where the model says how."""
        return dict(cls.train_defaults)

    @classmethod
    def resolve_config(cls, cfg, context: FitContext):
        """`cfg` with every 'auto' setting decided (config.toml records what was used)."""
        return cfg

    batch_kind: BatchKind | None = None  # closed-form models have no training batches

    def step_schedule(self, total_steps: int) -> StepSchedule:
        return StepSchedule()

    @classmethod
    def pretrained_runs(cls, cfg) -> dict[str, str]:
        """Role -> run directory of trained models to initialize from (none by default)."""
        return {}

    def init_from_pretrained(self, models: dict[str, "Recommender"]) -> None:
        raise RecscaleError(f"{type(self).__name__} cannot be initialized from pretrained runs")

    def id_axes(self) -> dict[str, tuple[int, ...]]:
        """State-dict key -> the axes indexed by ids (none by default: every tensor keeps its shape)."""
        return {}

    def grow_from(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Take the weights of this model trained on a parent dataset (models/growth.py): copied
        whole, or their leading rows along `id_axes` where this dataset has more ids."""
        grow_from(self, state, source, self.id_axes())

    def fit(self, user_items: torch.Tensor) -> None:
        raise RecscaleError(f"{type(self).__name__} is trained by steps, not fitted in closed form")

    def scoring_module(self) -> nn.Module | None:
        """Models that read a history score rows: forward(history (B, I)) -> (B, I)."""
        return RowScores(self) if self.needs_history else None

    @property
    def scores_new_users(self) -> bool:
        """Whether `fold_in_scorer` ranks for a user absent from training from its history alone."""
        return self.needs_history

    def fold_in_scorer(self, history: torch.Tensor) -> Callable[[slice | torch.Tensor], torch.Tensor] | None:
        """`catalog_scorer` for users absent from training, given their history rows (B, I), for
        models that keep per-user parameters (a history model's `catalog_scorer` already reads
        any user's rows); None: it cannot."""
        return None

    @property
    def scoring_kind(self) -> str | None:
        """'rows' (history in, fold-in possible), 'pairs' (user ids in) or None (no graph)."""
        return "rows" if self.needs_history else None

    def retrieval(self) -> "Retrieval | None":
        return None

    def fold_in_modules(self) -> dict[str, nn.Module]:
        return {}

    def score(self, users: torch.Tensor, history: torch.Tensor | None,
              items: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def catalog_scorer(self, users: torch.Tensor, history: torch.Tensor | None
                       ) -> Callable[[slice | torch.Tensor], torch.Tensor]:
        """items -> (B, b) scores of those items (a slice of the catalog, or a (b,) tensor of item
        ids), equal to those columns of score(users, history), in a new tensor (the caller masks it
        in place). `history`
        is dense (B, I) or a sparse CSR tensor (the evaluator's choice when a dense one would be
        larger than its bound). By default the block's items are
        scored as candidates: bounded for pairwise models; models whose candidate scores compute
        the whole catalog (history models) override it."""
        if history is not None and history.layout == torch.sparse_csr:
            history = history.to_dense()

        def block(items: slice | torch.Tensor) -> torch.Tensor:
            if isinstance(items, slice):
                items = torch.arange(items.start, items.stop, device=users.device)
            return self.score(users, history, items.expand(users.shape[0], -1))  # (B, b)
        return block


PAIRS_PER_CHUNK = 1 << 19  # (user, item) pairs scored at once by pairwise models: bounds activation memory


def score_pairs_in_chunks(logits_fn, users: torch.Tensor, items: torch.Tensor | None, n_items: int) -> torch.Tensor:
    """Scores of pairwise models (NCF, embedding MLP) for candidates (B, C) or, with `items` None,
    the whole catalog, computed a few users at a time so memory stays bounded."""
    if items is None:
        items = torch.arange(n_items, device=users.device).expand(users.shape[0], -1)
    rows = max(1, PAIRS_PER_CHUNK // max(1, items.shape[1]))
    out = [logits_fn(users[s:s + rows, None].expand_as(items[s:s + rows]), items[s:s + rows])
           for s in range(0, users.shape[0], rows)]
    return torch.cat(out) if out else items.new_zeros(items.shape, dtype=torch.float32)


def gather_candidates(scores: torch.Tensor, items: torch.Tensor | None) -> torch.Tensor:
    """Full-catalog scores (B, I) -> candidate scores (B, C), or unchanged without candidates."""
    return scores if items is None else torch.gather(scores, 1, items)


class RowScores(nn.Module):
    """A history model's scores of every item, from dense history rows (no user ids needed)."""

    def __init__(self, model: Recommender):
        super().__init__()
        self.model = model

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        users = torch.zeros(history.shape[0], dtype=torch.int64, device=history.device)
        return self.model.score(users, history)  # (B, I)


class PairScores(nn.Module):
    """A pairwise model's logits of (user, item) pairs: forward(users (N,), items (N,)) -> (N,)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.logits(users, items)


@dataclasses.dataclass
class Retrieval:
    """score(u, i) = user_vector(u) . item_vectors[i] + (a term equal for every item), so that
    top-k by inner product is top-k by score (what a FAISS inner-product index searches)."""

    user_module: nn.Module   # same inputs as the scoring module -> (B, d)
    item_vectors: torch.Tensor  # (I, d)


class LastLayerUsers(nn.Module):
    """User vectors of models whose score is a linear last layer over hidden units h (optionally
    through a monotonic function): [h, 1], so that [W_i, b_i] are the item vectors."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)  # (B, d - 1)
        return torch.cat([h, torch.ones_like(h[:, :1])], dim=1)


def last_layer_items(layer: nn.Linear) -> torch.Tensor:
    """[W_i, b_i] of a last layer (out = items): the item vectors matching LastLayerUsers."""
    return torch.cat([layer.weight, layer.bias[:, None]], dim=1).detach()

"""Evaluation protocols over a prepared dataset.

- sampled ranking (`ncf`): each held-out positive ranked among its own sampled negatives.
- full ranking (`vae`, `random`): every item ranked, the user's known input items masked out; the
  held-out items are the relevant ones.

Both keep each user's metric values and sum them exactly rounded at the end (metrics.exact_sum),
so results are bit-identical for any batch size; a multi-process run all-reduces those sums and
counts.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from recscale.data.dataset.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.evaluation.beyond import ListStats
from recscale.evaluation.blocks import SCORE_BLOCK_BYTES, RowBlocks, blocked_width, rank_in_blocks, sparse_rows
from recscale.evaluation.metrics import (
    exact_sum,
    interval_half_width,
    metric_names,
    metrics_from_hits,
    per_user_metrics,
)
from recscale.models.base import Recommender
from recscale.progress import bar
from recscale.ranking import top_k

DEFAULT_KS = (10, 20, 50, 100)


def meaningful(k: int, data: PreparedDataset) -> bool:
    """A cut-off says something about the model only below the sampled negatives: with N of them
    and K >= N, nearly every positive ranks in the top K (HR@100 of 101 candidates is about 1)."""
    negatives = data.sampled_negatives
    return negatives is None or k < negatives


def default_ks(data: PreparedDataset) -> tuple[int, ...]:
    """DEFAULT_KS less the cut-offs that are not meaningful on `data` (ncf: 10, 20, 50); with
    fewer than 11 sampled negatives, half of them."""
    kept = tuple(k for k in DEFAULT_KS if meaningful(k, data))
    return kept or (max(1, data.sampled_negatives // 2),)


def check_ks(ks, data: PreparedDataset, flag: str = "--k") -> tuple[int, ...]:
    """Cut-offs the user asked for, refused in one line when one is not meaningful."""
    ks = tuple(sorted(set(ks)))
    bad = [k for k in ks if not meaningful(k, data)]
    if bad:
        n = data.sampled_negatives
        raise RecscaleError(f"{flag}: {bad[0]} is not below the {n} sampled negatives of each held-out positive "
                            f"({n + 1} candidates), so every model scores about 1.0 at it; use cut-offs below {n} "
                            f"or prepare with more --test-negatives")
    return ks


def dense_rows(matrix, rows: np.ndarray, device) -> torch.Tensor:
    """Rows of a CSR matrix (scipy, or DiskRows when streaming) as a dense float tensor, built only
    for these rows."""
    return torch.from_numpy(matrix[rows].toarray()).to(device)


def validation_split(data: PreparedDataset) -> str:
    """The split that model selection reads: validation when the dataset has one."""
    return "valid" if data.has("valid") or data.has("valid_heldout") else "test"


TEST_HISTORIES = ("train+valid", "train")


def evaluation_sets(data: PreparedDataset, split: str, test_history: str = "train+valid"
                    ) -> tuple[np.ndarray, sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(users to evaluate, rows the model reads, rows masked out of the ranking, relevant rows).

    vae: the held-out users' fold-in rows are read and masked. ncf and random: validation users are
    scored from their training rows; test users from training + validation rows by default (the
    model sees everything known before the test interactions), or from training rows only with
    test_history="train" (RecBole's choice). Everything known is masked either way."""
    if test_history not in TEST_HISTORIES:
        raise ValueError(f"test_history must be one of {TEST_HISTORIES}")
    if data.protocol == "vae":
        users = data.group_users(split).numpy()
        foldin = data.rows(f"{split}_foldin")
        return users, foldin, foldin, data.rows(f"{split}_heldout")
    known = ("train",) if split == "valid" or not data.has("valid") else ("train", "valid")
    inputs = known if test_history == "train+valid" else ("train",)
    target = data.rows(split)
    users = np.flatnonzero(np.diff(target.indptr))
    return users, data.rows(*inputs), data.rows(*known), target


def _accumulate(total: dict, part: dict) -> None:
    for name, values in part.items():
        total.setdefault(name, []).append(values)


class _Coverage:
    """Which items reached some evaluated user's top K, for each K (union over batches)."""

    def __init__(self, n_items: int, ks, device):
        self.ks, self.shown = ks, torch.zeros((len(ks), n_items), dtype=torch.bool, device=device)

    def add(self, items: torch.Tensor, top: torch.Tensor) -> None:
        """items: (B, C) catalog ids of the candidates; top: (B, >= max K) candidate indices."""
        ranked = torch.gather(items, 1, top) if items is not None else top
        for i, k in enumerate(self.ks):
            self.shown[i, ranked[:, :k].reshape(-1)] = True


def per_user_values(total: dict, ks) -> dict[str, np.ndarray]:
    """The evaluated users (contiguous ids) and each metric's value for each, from the totals."""
    names = metric_names(ks)
    return {"user": torch.cat(total["_user"]).numpy() if "_user" in total else np.zeros(0, dtype=np.int64),
            **{name: torch.cat(total[name]).numpy() if name in total else np.zeros(0) for name in names}}


def _finish(total: dict, ks, coverage: _Coverage, reduce=None) -> dict:
    """Averages from the per-user values, with the 95% interval of each (`ci95`: half-widths, from
    the per-user standard error). With `reduce` (an all-reduce over ranks), the exactly rounded local
    sums, sums of squares and user counts (and the coverage sets) are summed across processes first."""
    names = metric_names(ks)
    values = {name: torch.cat(total[name]) if name in total else torch.zeros(0, dtype=torch.float64)
              for name in names}
    sums = torch.tensor([exact_sum(values[n]) for n in names] + [exact_sum(values[n] ** 2) for n in names]
                        + [float(values[names[0]].numel())], dtype=torch.float64)
    shown = coverage.shown.to(torch.float64).cpu()
    if reduce is not None:
        sums, shown = reduce(sums), reduce(shown)
    users = int(sums[-1])
    out: dict = {name: float(sums[i]) / users if users else float("nan") for i, name in enumerate(names)}
    for i, k in enumerate(ks):
        out[f"coverage@{k}"] = float((shown[i] > 0).sum()) / shown.shape[1]
    out["users"] = users
    out["ci95"] = {name: interval_half_width(float(sums[i]), float(sums[len(names) + i]), users)
                   for i, name in enumerate(names)}
    return out


@torch.no_grad()
def evaluate(model: Recommender, data: PreparedDataset, split: str, ks=DEFAULT_KS, device="cpu",
             batch_size: int = 1024, rank: int = 0, world_size: int = 1, reduce=None,
             test_history: str = "train+valid", per_user: dict | None = None, beyond: bool = False,
             block_bytes: int = SCORE_BLOCK_BYTES) -> dict:
    """Metrics of `model` on `split`, each with its 95% interval (`ci95`) and the number of users.
    With several processes, each evaluates every `world_size`-th user from `rank` on, and `reduce`
    sums their totals. `per_user`, when given, is filled with each evaluated user's values
    (`per_user_values`: what `recscale compare` pairs between runs). `beyond` adds novelty, ARP,
    intra-list diversity and the Gini coefficient of exposure at each K (beyond.py). Under full
    ranking no (users x items) block of scores exceeds `block_bytes` (blocks.py)."""
    model.eval()
    ks = tuple(sorted(set(ks)))
    shard = slice(rank, None, world_size)
    sets = evaluation_sets(data, split, test_history)
    lists = ListStats(data, ks, device) if beyond else None
    unscored = 0
    if data.protocol == "ncf":
        out = sampled_ranking(model, data, split, sets[1], ks, device, batch_size, shard, reduce, per_user, lists)
    else:
        sets, unscored = scorable(model, data, sets)
        out = full_ranking(model, data, sets, ks, device, batch_size, shard, reduce, per_user, lists, block_bytes)
    if unscored:  # users with targets the model has nothing to go on for (temporal cold users): said, not hidden
        out["unscored_users"] = unscored
    return out if lists is None else {**out, **lists.finish(reduce)}


def scorable(model: Recommender, data: PreparedDataset, sets) -> tuple[tuple, int]:
    """The evaluation sets less the users the model cannot rank, and how many those are: users
    with nothing in the rows the model reads, and, for models that do not score new users
    (pairwise: per-user parameters), users without training interactions."""
    users, inputs, masked, target = sets
    keep = scorable_users(model, data, inputs)[users]
    return (users[keep], inputs, masked, target), int((~keep).sum())


def scorable_users(model: Recommender, data: PreparedDataset, inputs) -> np.ndarray:
    """(U,) whether the model can rank for each user from `inputs` (the rows it reads): something
    there, and, for a model that does not score new users, training interactions too. The one rule
    of evaluation (the others are not scored) and of recommend (the others get the fallback)."""
    able = np.diff(inputs.indptr) > 0
    if not model.scores_new_users:
        able &= trained_users(data)
    return able


def trained_users(data: PreparedDataset) -> np.ndarray:
    """(U,) whether each user has training interactions (the others are new to a model)."""
    if not data.has("train"):
        return np.ones(data.n_users, dtype=bool)
    return np.diff(data.rows("train").indptr) > 0


def batch_scorer(model: Recommender, users: np.ndarray, inputs, trained: np.ndarray, block_bytes: int, device):
    """The catalog scorer (items -> (B, b)) of a batch of users: `catalog_scorer` for the users
    the model was trained on, `fold_in_scorer` on their rows in `inputs` for the others
    (`trained` (U,) says which; history models read every user's rows alike)."""
    history = model_history(model, inputs, users, block_bytes, device)
    u = torch.from_numpy(users).to(device)
    new = ~trained[users]
    if model.needs_history or not new.any():
        return model.catalog_scorer(u, history)
    folded = model.fold_in_scorer(sparse_rows(inputs, users[new], device))  # their rows, never dense
    known = model.catalog_scorer(u[~new], None) if not new.all() else None
    new_rows = torch.from_numpy(new).to(device)

    def block(items: slice | torch.Tensor) -> torch.Tensor:
        part = folded(items)  # (new, b)
        if known is None:
            return part
        out = part.new_empty((users.size, part.shape[1]))
        out[new_rows], out[~new_rows] = part, known(items).to(part.dtype)
        return out
    return block


def sampled_ranking(model, data, split, inputs, ks, device, batch_size, shard=slice(None), reduce=None,
                    per_user: dict | None = None, lists: ListStats | None = None) -> dict:
    """Each user's held-out positive among its sampled negatives, the rows read a batch at a time."""
    total: dict = {}
    coverage = _Coverage(data.n_items, ks, device)
    rank, world_size = shard.start or 0, shard.step or 1
    for u, positives, negatives in bar(data.candidate_batches(split, batch_size, rank, world_size),
                                       desc=f"evaluate {split}", unit="batch"):
        if u.numel() == 0:
            continue
        candidates = torch.cat([positives[:, None], negatives], 1)
        h = dense_rows(inputs, u.numpy(), device) if model.needs_history else None
        scores = model.score(u.to(device), h, candidates.to(device))  # (B, 1 + N)
        relevant = torch.zeros_like(candidates, dtype=torch.bool, device=device)
        relevant[:, 0] = True
        top = top_k(scores.float(), relevant, max(ks))
        _accumulate(total, {"_user": u.cpu(), **per_user_metrics(scores.float(), relevant, ks, top)})
        coverage.add(candidates.to(device), top)
        if lists is not None:
            lists.add(torch.gather(candidates.to(device), 1, top))
    if per_user is not None:
        per_user.update(per_user_values(total, ks))
    return _finish(total, ks, coverage, reduce)


def full_ranking(model, data, sets, ks, device, batch_size, shard=slice(None), reduce=None,
                 per_user: dict | None = None, lists: ListStats | None = None,
                 block_bytes: int = SCORE_BLOCK_BYTES, trained: np.ndarray | None = None) -> dict:
    """Every item ranked for each user, in item blocks (blocks.py): no (users x items) array of
    scores larger than `block_bytes`, the same results as ranking the whole rows. `trained` (U,)
    says which users the model scores as trained on (default: those with training interactions);
    the others are folded in from their rows (benchmarks/foldin.py folds in every one)."""
    users, inputs, masked, target = sets
    users = users[shard]
    trained = trained_users(data) if trained is None else trained
    total: dict = {}
    coverage = _Coverage(data.n_items, ks, device)
    for start in bar(range(0, users.size, batch_size), desc="evaluate", unit="batch"):
        user_ids, part, top = _ranked_batch(model, users[start:start + batch_size], inputs, masked, target, ks,
                                            block_bytes, device, trained)
        _accumulate(total, {"_user": user_ids, **part})
        coverage.add(None, top)
        if lists is not None:
            lists.add(top)
    if per_user is not None:
        per_user.update(per_user_values(total, ks))
    return _finish(total, ks, coverage, reduce)


def _ranked_batch(model, u: np.ndarray, inputs, masked, target, ks, block_bytes: int, device, trained):
    """(evaluated users, their metrics, their top max(ks)) for one batch of users."""
    scorer = batch_scorer(model, u, inputs, trained, block_bytes, device)
    relevant = RowBlocks(target, u, device)
    n_items = target.shape[1]
    top, _, hits, first = rank_in_blocks(scorer, u.size, n_items, max(ks), blocked_width(u.size, n_items, block_bytes),
                                         RowBlocks(masked, u, device), relevant, device, first_rank=True)
    counts = torch.from_numpy(relevant.counts).to(device)
    has = counts > 0  # users with a relevant item (the others are not counted)
    part = metrics_from_hits(hits[has], counts[has], first[has], ks, n_items)
    return torch.from_numpy(u)[has.cpu()], part, top[has]


def model_history(model, inputs, users: np.ndarray, block_bytes: int, device) -> torch.Tensor | None:
    """What a history model reads of these users: dense (B, I) rows while they fit in
    `block_bytes`, else a sparse CSR tensor (the model's sparse first layer reads it)."""
    if not model.needs_history:
        return None
    if users.size * inputs.shape[1] * 4 <= block_bytes:
        return dense_rows(inputs, users, device)
    return sparse_rows(inputs, users, device)

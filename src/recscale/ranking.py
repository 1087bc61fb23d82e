"""The tie rule, the one order of equal scores everywhere in recscale (evaluation, recommend and the
server): among equal scores, non-relevant candidates rank first, then lower candidate index. A
model that scores everything alike therefore gets no credit, and the order is exact and
deterministic (no dependence on torch.topk's tie order or the batch size). It sits at the lowest
layer so that serving ranks as evaluation does without importing the evaluation stack."""

from __future__ import annotations

import torch

_LOW31 = (1 << 31) - 1


def _orderable(scores: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 with the same order (NaN counts as -inf)."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    bits = scores.view(torch.int32)
    return (bits ^ ((bits >> 31) & _LOW31)).to(torch.int64)


def ranking_keys(scores: torch.Tensor, relevant: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """int64 keys whose descending order is the ranking with our tie rule; all keys are distinct.
    `index` gives each column's candidate index when `scores` holds a subset of the candidates."""
    if index is None:
        index = torch.arange(scores.shape[1], device=scores.device)
    return (_orderable(scores) << 32) | ((~relevant).to(torch.int64) << 31) | (_LOW31 - index)


TIE_MARGIN = 16


def top_k(scores: torch.Tensor, relevant: torch.Tensor, k: int) -> torch.Tensor:
    """(B, k) candidate indices of the top k under the tie rule, exactly.

    A float topk of k + TIE_MARGIN candidates contains every tie of the k-th score unless the
    (k + margin)-th score equals it; only those rows (massive ties) are ranked with keys over all
    candidates. Everything else is keyed on the few candidates alone."""
    n = scores.shape[1]
    k = min(k, n)
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    width = min(n, k + TIE_MARGIN)
    values, index = torch.topk(scores, width, dim=1)  # (B, width)
    keys = ranking_keys(values, torch.gather(relevant, 1, index), index)
    top = torch.gather(index, 1, torch.topk(keys, k, dim=1).indices)  # (B, k)
    spill = (values[:, k - 1] == values[:, width - 1]) if width < n else torch.zeros_like(values[:, 0], dtype=torch.bool)
    if bool(spill.any()):
        rows = torch.nonzero(spill).squeeze(1)
        top[rows] = torch.topk(ranking_keys(scores[rows], relevant[rows]), k, dim=1).indices
    return top


class RunningTopK:
    """The top k of rows whose candidates arrive one block of columns at a time: the same indices,
    in the same order, as `top_k` over the whole rows, without ever holding them. The ranking keys
    are distinct, so the top k of the union of the blocks is the top k of the blocks' own top ks.

    Once k candidates are kept, only a block's scores at or above a row's k-th kept score can
    enter: those few are picked out and merged by their keys, and the block is never sorted
    (after the first blocks, nearly every score falls below the k-th)."""

    def __init__(self, k: int):
        self.k = k
        self.keys: torch.Tensor | None = None    # (B, k) int64, descending
        self.values: torch.Tensor | None = None  # (B, k) float32 scores of the kept candidates

    def add(self, scores: torch.Tensor, relevant: torch.Tensor, start: int) -> None:
        """scores (B, b) float32 without NaN (rank one as -inf), relevant (B, b), for the candidates
        start .. start + b - 1."""
        if self.keys is None or self.keys.shape[1] < self.k:
            local = top_k(scores, relevant, min(self.k, scores.shape[1]))  # (B, k')
            return self._merge(torch.gather(scores, 1, local), torch.gather(relevant, 1, local), local + start)
        above = scores >= self.values[:, -1:]  # (B, b) may rank among the k kept
        rows, columns = torch.nonzero(above, as_tuple=True)
        if rows.numel() == 0:
            return
        counts = torch.bincount(rows, minlength=scores.shape[0])  # (B,)
        width = int(counts.max())
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
        values = torch.full((scores.shape[0], width), float("-inf"), device=scores.device)  # (B, m)
        index = torch.zeros((scores.shape[0], width), dtype=torch.int64, device=scores.device)
        marks = torch.zeros((scores.shape[0], width), dtype=torch.bool, device=scores.device)
        filled = torch.zeros_like(marks)
        values[rows, slot], index[rows, slot] = scores[rows, columns], columns + start
        marks[rows, slot], filled[rows, slot] = relevant[rows, columns], True
        keys = torch.where(filled, ranking_keys(values, marks, index), _EMPTY)  # padding ranks below all
        self._merge_keys(keys, values)

    def _merge(self, values: torch.Tensor, relevant: torch.Tensor, index: torch.Tensor) -> None:
        self._merge_keys(ranking_keys(values, relevant, index), values)

    def _merge_keys(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        if self.keys is not None:
            keys, values = torch.cat([self.keys, keys], 1), torch.cat([self.values, values], 1)
        order = torch.topk(keys, min(self.k, keys.shape[1]), dim=1).indices  # (B, k)
        self.keys, self.values = torch.gather(keys, 1, order), torch.gather(values, 1, order)

    @property
    def index(self) -> torch.Tensor:
        """(B, k) candidate indices of the top k, best first."""
        return _LOW31 - (self.keys & _LOW31)

    @property
    def relevant(self) -> torch.Tensor:
        """(B, k) whether each of the top k is relevant (the key's relevance bit)."""
        return ((self.keys >> 31) & 1) == 0


_EMPTY = torch.iinfo(torch.int64).min  # the key of a padding place: below every real key


def block_width(rows: int, n_columns: int, block_bytes: int) -> int:
    """Columns per block such that a (rows, columns) float32 block holds at most block_bytes
    (at least one column); n_columns when the whole row fits."""
    return int(min(n_columns, max(1, block_bytes // (4 * max(1, rows)))))

"""Full ranking of a catalog too large to score at once: the items are scored a block of columns
at a time (the model's `catalog_scorer`), known items masked and relevant ones marked block by
block from the CSR rows, and the top k kept by a running merge (ranking.RunningTopK), so that no
(users x items) array larger than one block ever exists. The result is the one `top_k` gives over
the whole rows, tie rule included.

The rank of the first relevant item is known from the top k when it lies there; for the rows
where it does not (the full-ranking MRR needs it), the blocks are scored a second time, counting
the candidates ranked ahead of the best relevant score found in the first pass (the tie rule of
metrics.first_relevant_rank: higher scores, and non-relevant ones of equal score). The second pass
scores the same batch in the same blocks, so its scores are those of the first.
"""

from __future__ import annotations

import warnings
from typing import Callable

import numpy as np
import torch

from recscale.config.run import SCORE_BLOCK_MIB
from recscale.ranking import RunningTopK, block_width

SCORE_BLOCK_BYTES = SCORE_BLOCK_MIB << 20  # no (users x items) float32 block of scores is larger by default
# Blocks are at most this large whatever the bound: glibc serves allocations this size from its
# heap, while larger ones are mapped and unmapped each time and pay their page faults again
# (measured here: elementwise passes over 256 MiB blocks 2-5x slower, whole evaluations 3x).
FAST_BLOCK_BYTES = 16 << 20


def blocked_width(rows: int, n_items: int, block_bytes: int) -> int:
    """Items per block for `rows` users: blocks within `block_bytes` and FAST_BLOCK_BYTES."""
    return block_width(rows, n_items, min(block_bytes, FAST_BLOCK_BYTES))


class RowBlocks:
    """The nonzeros of some rows of a CSR matrix (scipy, or DiskRows when streaming), handed out
    as (B, b) boolean masks of one block of columns at a time."""

    def __init__(self, matrix, rows: np.ndarray, device):
        part = matrix[rows]  # (B, I) CSR of these rows only
        part.sum_duplicates()
        self.counts = np.diff(part.indptr)  # (B,) nonzeros per row
        row = np.repeat(np.arange(rows.size), self.counts)
        order = np.argsort(part.indices, kind="stable")  # by column, so a block is a contiguous run
        self.columns = part.indices[order].astype(np.int64)
        self.row = torch.from_numpy(row[order]).to(device)
        self.col = torch.from_numpy(self.columns).to(device)
        self.n_rows, self.device = rows.size, device

    def entries(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, columns - start) of the nonzeros in columns start .. stop - 1."""
        lo, hi = np.searchsorted(self.columns, [start, stop])
        return self.row[lo:hi], self.col[lo:hi] - start

    def mask(self, start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) True where a row has a nonzero in columns start .. stop - 1."""
        out = torch.zeros((self.n_rows, stop - start), dtype=torch.bool, device=self.device)
        out[self.entries(start, stop)] = True
        return out


def sparse_rows(matrix, rows: np.ndarray, device) -> torch.Tensor:
    """Rows of a CSR matrix as a torch sparse CSR tensor (B, I) of float32, never made dense."""
    part = matrix[rows]
    with warnings.catch_warnings():  # torch calls its CSR tensors beta, once per process
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(part.indptr.astype(np.int64)),
                                       torch.from_numpy(part.indices.astype(np.int64)),
                                       torch.from_numpy(part.data.astype(np.float32)),
                                       size=part.shape, check_invariants=False).to(device)


def _blocks(n_items: int, width: int):
    return (slice(start, min(n_items, start + width)) for start in range(0, n_items, width))


def _scores(scorer, block: slice, masked: RowBlocks | None) -> torch.Tensor:
    """The block's scores, NaN as -inf and masked items at -inf, in place (the scorer's tensor is
    new: nothing of the size of a block is allocated twice)."""
    scores = scorer(block).float()  # (B, b)
    if bool(torch.isnan(scores.max())):
        scores.nan_to_num_(nan=float("-inf"))
    if masked is not None:
        rows, columns = masked.entries(block.start, block.stop)
        scores[rows, columns] = float("-inf")
    return scores


def _best_relevant(scorer, relevant: RowBlocks, masked: RowBlocks | None, n_rows: int, n_items: int, width: int,
                   device) -> torch.Tensor:
    """(B,) each row's best relevant score, from calls scoring only the batch's relevant items
    (`width` of them at a time, as a block)."""
    best = torch.full((n_rows,), float("-inf"), device=device)
    items = np.unique(relevant.columns)
    hidden = np.zeros(relevant.columns.size, dtype=bool)
    if masked is not None:  # a relevant item that is also masked ranks at -inf
        hidden = np.isin(relevant.row.cpu().numpy() * n_items + relevant.columns,
                         masked.row.cpu().numpy() * n_items + masked.columns)
    place = np.searchsorted(items, relevant.columns)  # (nnz,) each relevant entry's column among `items`
    for lo in range(0, items.size, width):
        part = items[lo:lo + width]
        scores = torch.nan_to_num(scorer(torch.from_numpy(part).to(device)).float(), nan=float("-inf"))  # (B, c)
        chosen = np.flatnonzero((place >= lo) & (place < lo + part.size))
        values = scores[relevant.row[chosen], torch.from_numpy(place[chosen] - lo).to(device)]
        values = values.masked_fill(torch.from_numpy(hidden[chosen]).to(device), float("-inf"))
        best.scatter_reduce_(0, relevant.row[chosen], values, "amax")
    return best


def _ahead(scores: torch.Tensor, threshold: torch.Tensor, relevant: RowBlocks, block: slice) -> torch.Tensor:
    """(B,) candidates of the block ranked ahead of a relevant score `threshold` (B,) that is the
    row's best: every score at or above it, less the relevant ones (none is above it, and those
    equal to it rank after the non-relevant ones of equal score)."""
    ahead = torch.ge(scores, threshold[:, None]).sum(dim=1, dtype=torch.int32).long()
    rows, columns = relevant.entries(block.start, block.stop)
    return ahead.index_add_(0, rows, -(scores[rows, columns] >= threshold[rows]).long())


def rank_in_blocks(scorer: Callable[[slice | torch.Tensor], torch.Tensor], n_rows: int, n_items: int, k: int,
                   width: int, masked: RowBlocks | None, relevant: RowBlocks | None = None, device="cpu",
                   first_rank: bool = False):
    """(index (B, k'), values (B, k'), hits (B, k'), first relevant rank (B,) or None) of the rows'
    top k' = min(k, n_items) over the whole catalog, scored `width` items at a time; items in
    `masked` rank last (-inf), those in `relevant` are the relevant ones of the tie rule.

    The first relevant rank beyond the top k counts the candidates ahead of the row's best
    relevant score as the blocks go by, against that score as one call on the relevant items
    alone gives it; where the blocks' own score of it differs (another kernel may round
    otherwise), those rows are counted again in a second pass, against the blocks' score."""
    running = RunningTopK(min(k, n_items))
    best = torch.full((n_rows,), float("-inf"), device=device)  # best relevant score, from the blocks
    guess = _best_relevant(scorer, relevant, masked, n_rows, n_items, width, device) if first_rank else None
    ahead = torch.zeros(n_rows, dtype=torch.int64, device=device)
    for block in _blocks(n_items, width):
        scores = _scores(scorer, block, masked)
        marks = relevant.mask(block.start, block.stop) if relevant is not None else torch.zeros_like(scores, dtype=torch.bool)
        running.add(scores, marks, block.start)
        if first_rank:
            rows, columns = relevant.entries(block.start, block.stop)
            best.scatter_reduce_(0, rows, scores[rows, columns], "amax")
            ahead += _ahead(scores, guess, relevant, block)
    hits = running.relevant
    if not first_rank:
        return running.index, running.values, hits, None
    rank = torch.where(hits.any(dim=1), hits.int().argmax(dim=1) + 1, ahead + 1)  # in the top k, or counted
    recount = ~hits.any(dim=1) & (guess != best)
    if bool(recount.any()):
        again = torch.zeros(n_rows, dtype=torch.int64, device=device)
        for block in _blocks(n_items, width):
            again += _ahead(_scores(scorer, block, masked), best, relevant, block)
        rank = torch.where(recount, again + 1, rank)
    return running.index, running.values, hits, rank

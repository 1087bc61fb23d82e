"""The scoring behind the endpoints: one batch of jobs (known users, new users' histories, or
popularity) into as few graph calls as the bundle allows, with the same scores, seen items and tie
rule as `recscale recommend`."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from recscale.config.run import SCORE_BLOCK_MIB
from recscale.serving.bundle import PAIRS_PER_CALL, Bundle

SCORE_BLOCK_BYTES = SCORE_BLOCK_MIB << 20  # the largest (jobs x items) array of scores a batch holds


@dataclasses.dataclass
class Job:
    """One request's work for the batch: whose scores (a known user, a history, or popularity),
    what to leave out, and what to return (top k, or the scores of candidates)."""

    user: int | None = None               # a known user (contiguous id)
    history: np.ndarray | None = None     # contiguous item ids of a folded-in user
    exclude: np.ndarray | None = None     # contiguous item ids left out of the top k
    k: int = 0
    candidates: np.ndarray | None = None  # /score: contiguous item ids


class Service:
    """The scoring behind the endpoints: turns a batch of jobs into one graph call."""

    def __init__(self, bundle: Bundle, index=None):
        self.bundle, self.index = bundle, index

    def _popular(self, job: Job) -> bool:
        if job.user is not None:
            return self.bundle.history_size[job.user] == 0  # nothing to go on, as `recscale recommend`
        return job.history is None or job.history.size == 0

    def _history_rows(self, jobs: list[Job]) -> np.ndarray:
        """(B, I) input rows: known users' from the bundle (one CSR slice for all), new users' items."""
        b = self.bundle
        known = [n for n, job in enumerate(jobs) if job.user is not None]
        rows = np.zeros((len(jobs), b.n_items), dtype=np.float32)
        if known:
            rows[known] = b.rows(b.history, np.array([jobs[n].user for n in known]))
        for n, job in enumerate(jobs):
            if job.user is None:
                rows[n, job.history] = 1.0
        return rows

    def _model_scores(self, jobs: list[Job]) -> np.ndarray:
        """(B, I) scores of jobs that have a model to go on."""
        b = self.bundle
        if b.kind == "rows":
            return b.score_histories(self._history_rows(jobs))
        if b.kind == "pairs":
            scores = np.empty((len(jobs), b.n_items), dtype=np.float32)
            known = [n for n, job in enumerate(jobs) if job.user is not None]
            new = [n for n, job in enumerate(jobs) if job.user is None]
            if known:
                scores[known] = b.score_users(np.array([jobs[n].user for n in known], dtype=np.int64))
            if new:
                scores[new] = b.score_new_users([jobs[n].history for n in new])
            return scores
        return b.popular_rows(len(jobs))

    def score(self, jobs: list[Job]) -> list[Any]:
        """Each job's answer. The (jobs x items) scores of a large catalog are computed for a few
        jobs at a time, so that no array of them exceeds SCORE_BLOCK_BYTES (at 1M items: 64 jobs)."""
        rows = max(1, SCORE_BLOCK_BYTES // (4 * self.bundle.n_items))
        return [answer for start in range(0, len(jobs), rows) for answer in self._score(jobs[start:start + rows])]

    def _score(self, jobs: list[Job]) -> list[Any]:
        b = self.bundle
        popular = [self._popular(job) for job in jobs]
        modelled = [n for n, p in enumerate(popular) if not p]
        # the index holds the user vectors of known users (and of any history, for history models);
        # a pairwise model's new users are scored exactly from their folded-in vectors
        retrievable = [n for n in modelled if b.kind == "rows" or jobs[n].user is not None]
        if retrievable and self.index is not None and all(jobs[n].candidates is None for n in modelled):
            return self._retrieve(jobs, retrievable)
        scores = np.empty((len(jobs), b.n_items), dtype=np.float32)
        if modelled:
            scores[modelled] = self._model_scores([jobs[n] for n in modelled])
        if len(modelled) < len(jobs):
            scores[[n for n, p in enumerate(popular) if p]] = b.popularity
        results: list[Any] = [None] * len(jobs)
        ranked = [n for n, job in enumerate(jobs) if job.candidates is None]
        for n, job in enumerate(jobs):
            if job.candidates is not None:
                results[n] = (scores[n, job.candidates], popular[n])
        if ranked:
            exclude = [(i, jobs[n].exclude) for i, n in enumerate(ranked) if jobs[n].exclude is not None]
            top_items, top_scores = b.top(scores[ranked], exclude, max(jobs[n].k for n in ranked))
            for i, n in enumerate(ranked):
                k = jobs[n].k
                keep = np.isfinite(top_scores[i, :k])
                results[n] = (top_items[i, :k][keep], top_scores[i, :k][keep], popular[n])
        return results

    def _retrieve(self, jobs: list[Job], modelled: list[int]) -> list[Any]:
        """Top k by inner product through the FAISS index (the user vectors from the bundle's graph)."""
        b = self.bundle
        group = [jobs[n] for n in modelled]
        if b.kind == "rows":
            vectors = b.user_vectors(self._history_rows(group))
        else:
            vectors = b.user_vectors(np.array([job.user for job in group], dtype=np.int64))
        widest = max(job.k + (job.exclude.size if job.exclude is not None else 0) for job in group)
        found_scores, found = self.index.search(vectors, min(widest, b.n_items))
        out: dict[int, Any] = {}
        for n, job, ids, values in zip(modelled, group, found, found_scores):
            keep = ids >= 0
            if job.exclude is not None:
                keep &= ~np.isin(ids, job.exclude)
            out[n] = (ids[keep][:job.k], values[keep][:job.k], False)
        rest = [n for n in range(len(jobs)) if n not in out]
        if rest:
            for n, result in zip(rest, Service(b).score([jobs[n] for n in rest])):
                out[n] = result
        return [out[n] for n in range(len(jobs))]


def warm_up(service: Service, max_batch: int) -> None:
    """Score one full batch before serving: the runtime sizes its buffers on the first batch of each
    size (measured: the first batch of 64 took about 150 ms more than the next ones)."""
    b = service.bundle
    users = [u for u in range(min(b.n_users, max_batch)) if b.history_size[u]] or [0]
    jobs = [Job(user=users[n % len(users)], k=10) for n in range(max_batch)]
    if b.kind == "pairs":  # a pairwise model scores users x items pairs: one chunk is enough
        b.score_pairs(np.zeros(min(PAIRS_PER_CALL, b.n_items * max_batch), dtype=np.int64),
                      np.zeros(min(PAIRS_PER_CALL, b.n_items * max_batch), dtype=np.int64))
        jobs = jobs[:1]
    service.score(jobs)


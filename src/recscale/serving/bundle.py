"""A bundle opened for serving: id maps, seen items, popularity, and the graphs run by ONNX Runtime
(or, for a trusted bundle, torch.export's program). It reads the bundle directory only, never a run or
raw files, and only after every file was verified against the manifest (format.py).

Scores of a known user are the same as `recscale recommend`'s: the same history rows, seen items,
popularity fallback and tie rule (equal scores: the lower item id first)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recscale.errors import RecscaleError
from recscale.ranking import top_k
from recscale.serving.format import MANIFEST, open_bundle_files
from recscale.serving.runtime import RUNTIMES, Graph

PAIRS_PER_CALL = 1 << 18  # pairs scored per graph call: bounds the activations of pairwise models
FOLD_IN_PAIRS = 1 << 17  # (user, item) pairs of one fold-in graph call (history + pool per user)


def _refuse(path: Path, problem: str) -> RecscaleError:
    return RecscaleError(f"--bundle: {path}: {problem}")


def _array(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise _refuse(path, f"not a NumPy array: {str(exc).splitlines()[0]}") from None


def _csr(path: Path, shape: tuple[int, int]) -> sp.csr_matrix:
    """A CSR matrix of ones from the bundle, checked to be well formed with `shape`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            indptr, indices, stored = data["indptr"], data["indices"], tuple(data["shape"].tolist())
    except (OSError, ValueError, KeyError) as exc:
        raise _refuse(path, f"not a CSR matrix (indptr, indices, shape): {str(exc).splitlines()[0]}") from None
    if stored != shape:
        raise _refuse(path, f"shape {stored}, the manifest says {shape}")
    well_formed = (indptr.ndim == indices.ndim == 1 and indptr.size == shape[0] + 1 and indptr[0] == 0
                   and indptr[-1] == indices.size and bool(np.all(np.diff(indptr) >= 0))
                   and (indices.size == 0 or (indices.min() >= 0 and indices.max() < shape[1])))
    if not well_formed:
        raise _refuse(path, "malformed CSR (pointers out of order or item ids out of range)")
    return sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, indptr), shape=shape)


def _id_map(path: Path, rows: int) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # Polars' own errors: not a Parquet file
        raise _refuse(path, f"not a Parquet table: {str(exc).splitlines()[0]}") from None
    if "original_id" not in frame.columns:
        raise _refuse(path, "no original_id column")
    if frame.height != rows:
        raise _refuse(path, f"{frame.height} rows, the manifest says {rows}")
    if frame["original_id"].cast(pl.Utf8).n_unique() != rows:
        raise _refuse(path, "original ids are not unique")
    return frame


def fold_in_groups(histories: list[np.ndarray], pool: int) -> list[list[np.ndarray]]:
    """Consecutive groups of histories, each within FOLD_IN_PAIRS (user, item) pairs once padded
    and given the graph's `pool` negatives (a request holds up to MAX_ITEMS items: a full batch
    of such requests in one call would hold gigabytes); a longer history alone."""
    groups, width = [[]], 0
    for history in histories:
        longest = max(width, history.size)
        if groups[-1] and (len(groups[-1]) + 1) * (longest + pool) > FOLD_IN_PAIRS:
            groups.append([])
            longest = history.size
        groups[-1].append(history)
        width = longest
    return groups


class Bundle:
    """A verified bundle: every file checked against the manifest and every shape against the
    manifest's counts before anything is served. `trust` allows torch.export programs (which
    unpickle when loaded); without it only ONNX graphs run."""

    def __repr__(self) -> str:
        graphs = ", ".join(k for k, v in self.manifest["graphs"].items() if v) or "no graph"
        return (f"Bundle({str(self.root)!r}: {self.manifest['model']}, {self.n_users:,} users x {self.n_items:,} "
                f"items, {graphs})")

    def __init__(self, root: str | Path, runtime: str = "auto", threads: int = 0, trust: bool = False):
        self.root = Path(root)
        if runtime not in RUNTIMES:
            raise RecscaleError(f"--runtime: {', '.join(RUNTIMES)}, got {runtime!r}")
        self.manifest, self.digest = open_bundle_files(self.root)
        listed = self.manifest["files"]
        for name in ("users.parquet", "items.parquet", "seen.npz", "history.npz", "popularity.npy"):
            if name not in listed:
                raise _refuse(self.root / MANIFEST, f"files: {name} is missing from the list")
        self.kind = self.manifest["kind"]
        self.n_users, self.n_items = self.manifest["n_users"], self.manifest["n_items"]
        if not threads and hasattr(os, "sched_getaffinity"):
            threads = len(os.sched_getaffinity(0))
        graphs = {k: v for k, v in self.manifest["graphs"].items() if v is not None}
        if (self.kind is None) != ("scores" not in graphs):
            raise _refuse(self.root / MANIFEST, f"kind {self.kind!r} does not match its graphs ({', '.join(graphs) or 'none'})")
        users = _id_map(self.root / "users.parquet", self.n_users)
        items = _id_map(self.root / "items.parquet", self.n_items)
        self.user_ids = users["original_id"].to_numpy()
        self.item_ids = items["original_id"].to_numpy()
        self.titles = items["title"].to_list() if "title" in items.columns else None
        self.user_index = {str(u): i for i, u in enumerate(self.user_ids.tolist())}
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids.tolist())}
        self.seen = _csr(self.root / "seen.npz", (self.n_users, self.n_items))
        self.history = _csr(self.root / "history.npz", (self.n_users, self.n_items))
        self.history_size = np.diff(self.history.indptr)
        popularity = _array(self.root / "popularity.npy")
        if popularity.shape != (self.n_items,) or not np.all(np.isfinite(popularity.astype(np.float64))):
            raise _refuse(self.root / "popularity.npy", f"shape {popularity.shape} (finite values expected, the "
                          f"manifest says ({self.n_items},))")
        self.popularity = popularity.astype(np.float32)
        self.scores = Graph(self.root, graphs["scores"], listed, runtime, threads, trust) if "scores" in graphs else None
        self.user_vectors = self.item_vectors = None
        if "user_vectors" in graphs:
            spec = graphs["user_vectors"]
            self.user_vectors = Graph(self.root, spec, listed, runtime, threads, trust)
            vectors = _array(self.root / spec["item_vectors"]) if spec.get("item_vectors") else None
            if vectors is None or vectors.shape != (self.n_items, spec.get("dim")) or vectors.dtype != np.float32:
                raise _refuse(self.root / str(spec.get("item_vectors")), f"item vectors of shape "
                              f"{None if vectors is None else vectors.shape}, the manifest says "
                              f"({self.n_items}, {spec.get('dim')}) float32")
            self.item_vectors = vectors
        self.fold_in = self.vector_scores = None
        if self.kind == "pairs" and ("fold_in" in graphs) != ("vector_scores" in graphs):
            raise _refuse(self.root / MANIFEST, "graphs: fold_in and vector_scores come together")
        if self.kind == "pairs" and "fold_in" in graphs:
            self.fold_in = Graph(self.root, graphs["fold_in"], listed, runtime, threads, trust)
            self.vector_scores = Graph(self.root, graphs["vector_scores"], listed, runtime, threads, trust)
            self.vector_dim = graphs["fold_in"].get("dim")
            self.fold_in_pool = int(graphs["fold_in"].get("pool", 0))  # negatives the graph adds per user
        self._probe()

    def _probe(self) -> None:
        """Run each graph once on one input: a graph whose output does not fit the manifest is
        refused now, not answered with a 500 (or an empty 200) at request time."""
        checks = []
        if self.scores is not None:
            expected = (1, self.n_items) if self.kind == "rows" else (1,)
            checks.append((self.scores, expected))
        if self.user_vectors is not None:
            checks.append((self.user_vectors, (1, self.item_vectors.shape[1])))
        if self.fold_in is not None:
            checks += [(self.fold_in, (1, self.vector_dim)), (self.vector_scores, (1,))]
        for graph, expected in checks:
            if self.kind == "rows":
                inputs = (np.zeros((1, self.n_items), dtype=np.float32),)
            elif graph is self.fold_in:
                inputs = (np.zeros((1, 1), dtype=np.int64), np.ones((1, 1), dtype=np.float32))
            elif graph is self.vector_scores:
                inputs = (np.zeros((1, self.vector_dim or 1), dtype=np.float32), np.zeros(1, dtype=np.int64))
            else:
                inputs = tuple(np.zeros(1, dtype=np.int64) for _ in graph.inputs)
            try:
                got = np.asarray(graph(*inputs))
            except Exception as exc:  # the runtime's own errors: the graph does not take the manifest's inputs
                raise _refuse(self.root, f"its {graph.runtime} graph fails on the manifest's inputs: "
                              f"{str(exc).splitlines()[0]}") from None
            if got.shape != expected:
                raise _refuse(self.root, f"its {graph.runtime} graph answers shape {got.shape}, the manifest "
                              f"says {expected}")

    # ------------------------------------------------------------------ ids

    def user(self, original) -> int | None:
        return self.user_index.get(str(original))

    def items(self, originals) -> tuple[np.ndarray, list]:
        """Contiguous ids of original item ids, and the unknown ones."""
        found, unknown = [], []
        for item in originals:
            index = self.item_index.get(str(item))
            (unknown.append(item) if index is None else found.append(index))
        return np.array(found, dtype=np.int64), unknown

    # ------------------------------------------------------------------ scores

    def rows(self, matrix: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
        return matrix[users].toarray().astype(np.float32)

    def score_histories(self, history: np.ndarray) -> np.ndarray:
        """(B, I) scores of history rows (models that read a history)."""
        return self.scores(history)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(users.size, dtype=np.float32)
        for start in range(0, users.size, PAIRS_PER_CALL):
            part = slice(start, start + PAIRS_PER_CALL)
            out[part] = self.scores(users[part].astype(np.int64), items[part].astype(np.int64))
        return out

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """(B, I) scores of known users, as `recscale recommend` computes them."""
        if self.kind == "rows":
            return self.score_histories(self.rows(self.history, users))
        if self.kind == "pairs":
            return self._all_pairs(users.size, lambda rows, items: self.scores(users[rows].astype(np.int64), items))
        return np.broadcast_to(self.popularity, (users.size, self.n_items)).copy()

    def _all_pairs(self, n: int, score) -> np.ndarray:
        """(n, I) scores of every (row, item) pair, made a chunk at a time (no (n x I) index
        arrays): score(rows (N,), items (N,) int64) -> (N,)."""
        out = np.empty(n * self.n_items, dtype=np.float32)
        for start in range(0, out.size, PAIRS_PER_CALL):
            pair = np.arange(start, min(out.size, start + PAIRS_PER_CALL))
            out[start:start + pair.size] = score(pair // self.n_items, (pair % self.n_items).astype(np.int64))
        return out.reshape(n, self.n_items)

    def score_new_users(self, histories: list[np.ndarray]) -> np.ndarray:
        """(B, I) scores of new users of a pairwise model from their (non-empty) histories of
        contiguous item ids: vectors by the fold-in graph, then every item scored from them, the
        scores `recscale recommend --histories` gives (within export.py's PARITY_RTOL_OF)."""
        groups = fold_in_groups(histories, self.fold_in_pool)
        vectors = np.concatenate([self._fold_in(part) for part in groups])  # (B, D)
        return self._all_pairs(len(histories), lambda rows, pairs: self.vector_scores(vectors[rows], pairs))

    def _fold_in(self, histories: list[np.ndarray]) -> np.ndarray:
        length = max(h.size for h in histories)
        items = np.zeros((len(histories), length), dtype=np.int64)
        mask = np.zeros((len(histories), length), dtype=np.float32)
        for row, history in enumerate(histories):
            items[row, :history.size] = np.sort(history)  # item order, as recommend pads them
            mask[row, :history.size] = 1.0
        return np.asarray(self.fold_in(items, mask), dtype=np.float32)  # (b, D)

    def top(self, scores: np.ndarray, exclude: list[tuple[int, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(items (B, k'), scores (B, k')) of the top k, excluded items left out ((row, item ids)
        pairs), equal scores by the lower item id (the rule of `recscale recommend`); -inf marks
        places past the unseen items. `scores` is overwritten."""
        scores = torch.from_numpy(np.ascontiguousarray(scores, dtype=np.float32))
        if exclude:
            rows = torch.from_numpy(np.concatenate([np.full(items.size, row) for row, items in exclude]))
            items = torch.from_numpy(np.concatenate([items for _, items in exclude]).astype(np.int64))
            scores[rows, items] = float("-inf")  # one scatter for the whole batch
        k = min(k, self.n_items)
        index = top_k(scores, torch.zeros_like(scores, dtype=torch.bool), k)
        return index.numpy(), torch.gather(scores, 1, index).numpy()

    def popular_rows(self, n: int) -> np.ndarray:
        return np.broadcast_to(self.popularity, (n, self.n_items)).copy()

"""A bundle opened for serving: id maps, seen items, popularity, and the graphs run by ONNX Runtime
(or torch.export's program). It reads the bundle directory only, never a run or raw files.

Scores of a known user are the same as `recscale recommend`'s: the same history rows, seen items,
popularity fallback and tie rule (equal scores: the lower item id first)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from recscale.errors import RecscaleError
from recscale.evaluation.metrics import top_k

BUNDLE_VERSIONS = (1,)
PAIRS_PER_CALL = 1 << 18  # pairs scored per graph call: bounds the activations of pairwise models


def _csr(path: Path) -> sp.csr_matrix:
    data = np.load(path)
    indptr, indices, shape = data["indptr"], data["indices"], tuple(data["shape"])
    return sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, indptr), shape=shape)


class Graph:
    """One exported graph, run by ONNX Runtime (model.onnx) or torch.export's program (model.pt2)."""

    def __init__(self, root: Path, spec: dict, runtime: str, threads: int):
        files = spec["files"]
        self.inputs = list(spec["inputs"])
        self.output = next(iter(spec["outputs"]))
        onnx = next((f for f in files if f.endswith(".onnx")), None)
        pt2 = next((f for f in files if f.endswith(".pt2")), None)
        if runtime == "auto":
            runtime = "onnx" if onnx else "torch"
        if runtime == "onnx":
            if not onnx:
                raise RecscaleError(f"--runtime onnx: {root} has no ONNX graph (export it with --format onnx)")
            from recscale.export import onnx_session
            self.session, self.runtime = onnx_session(root / onnx, threads), "onnx"
        else:
            if not pt2:
                raise RecscaleError(f"--runtime torch: {root} has no torch.export graph (export it with --format torch)")
            self.program, self.runtime = torch.export.load(root / pt2).module(), "torch"

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        if self.runtime == "onnx":
            return self.session.run([self.output], dict(zip(self.inputs, arrays)))[0]
        with torch.no_grad():
            return self.program(*(torch.from_numpy(a) for a in arrays)).numpy()


class Bundle:
    def __init__(self, root: str | Path, runtime: str = "auto", threads: int = 0):
        self.root = Path(root)
        try:
            self.manifest = json.loads((self.root / "manifest.json").read_text())
        except FileNotFoundError:
            raise RecscaleError(f"--bundle: {self.root} is not a bundle (no manifest.json; run `recscale export`)") from None
        except (OSError, ValueError) as exc:
            raise RecscaleError(f"--bundle: {self.root / 'manifest.json'}: unreadable: {exc}") from None
        if self.manifest.get("bundle_version") not in BUNDLE_VERSIONS:
            raise RecscaleError(f"--bundle: {self.root}: bundle version {self.manifest.get('bundle_version')}, "
                                f"this recscale reads {BUNDLE_VERSIONS}")
        if runtime not in ("auto", "onnx", "torch"):
            raise RecscaleError(f"--runtime: auto, onnx or torch, got {runtime!r}")
        self.kind = self.manifest["kind"]
        self.n_users, self.n_items = self.manifest["n_users"], self.manifest["n_items"]
        threads = threads or len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else threads
        graphs = self.manifest["graphs"]
        self.scores = Graph(self.root, graphs["scores"], runtime, threads) if "scores" in graphs else None
        self.user_vectors = Graph(self.root, graphs["user_vectors"], runtime, threads) if "user_vectors" in graphs else None
        self.item_vectors = np.load(self.root / graphs["user_vectors"]["item_vectors"]) if self.user_vectors else None
        users = pl.read_parquet(self.root / "users.parquet")
        items = pl.read_parquet(self.root / "items.parquet")
        self.user_ids = users["original_id"].to_numpy()
        self.item_ids = items["original_id"].to_numpy()
        self.titles = items["title"].to_list() if "title" in items.columns else None
        self.user_index = {str(u): i for i, u in enumerate(self.user_ids.tolist())}
        self.item_index = {str(i): n for n, i in enumerate(self.item_ids.tolist())}
        self.seen = _csr(self.root / "seen.npz")
        self.history = _csr(self.root / "history.npz")
        self.history_size = np.diff(self.history.indptr)
        self.popularity = np.load(self.root / "popularity.npy").astype(np.float32)

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
            flat_users = np.repeat(users, self.n_items)
            flat_items = np.tile(np.arange(self.n_items), users.size)
            return self.score_pairs(flat_users, flat_items).reshape(users.size, self.n_items)
        return np.broadcast_to(self.popularity, (users.size, self.n_items)).copy()

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

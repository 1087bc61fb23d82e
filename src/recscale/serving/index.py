"""Top-k retrieval over large catalogs with FAISS, for models whose score is an inner product of a
user vector and item vectors (models/base.py `retrieval`): GMF, Mult-VAE, Mult-DAE, the
autoencoder (its sigmoid is monotonic) and EASE for catalogs up to 20,000 items. NeuMF, MLP and
the embedding MLP mix user and item inside their towers: no index can rank for them.

`flat` (IndexFlatIP) is exact; `ivf` (IndexIVFFlat, inner product) clusters the items into `nlist`
cells and searches the `nprobe` nearest: approximate, much faster on catalogs of about a million
items and more (benchmarks/retrieval.py measures recall@10 against exact and queries/s).
"""

from __future__ import annotations

import math

import numpy as np

from recscale.errors import RecscaleError

INDEXES = ("flat", "ivf")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise RecscaleError("--index: needs faiss (pip install 'recscale[retrieval]')") from None
    return faiss


def default_nlist(n_items: int) -> int:
    """FAISS's guideline: about 4 sqrt(n) cells (at least 1, at most n / 39 so every cell trains)."""
    return max(1, min(int(4 * math.sqrt(n_items)), n_items // 39 or 1))


class ItemIndex:
    def __init__(self, item_vectors: np.ndarray, kind: str = "flat", nlist: int = 0, nprobe: int = 16,
                 seed: int = 0, threads: int = 0):
        if kind not in INDEXES:
            raise RecscaleError(f"--index: choose from {', '.join(INDEXES)}, got {kind!r}")
        faiss = _faiss()
        if threads:
            faiss.omp_set_num_threads(threads)
        vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        n, d = vectors.shape
        self.kind = kind
        if kind == "flat":
            self.index = faiss.IndexFlatIP(d)
        else:
            nlist = nlist or default_nlist(n)
            quantizer = faiss.IndexFlatIP(d)
            self.index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            sample = vectors[np.random.default_rng(seed).permutation(n)[: min(n, 64 * nlist)]]
            self.index.cp.seed = seed
            self.index.train(sample)
            self.index.nprobe = min(nprobe, nlist)
            self._quantizer = quantizer  # FAISS does not own it from Python: keep it alive
        self.index.add(vectors)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores (B, k), item ids (B, k)); ids of -1 mark places an approximate index left empty."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

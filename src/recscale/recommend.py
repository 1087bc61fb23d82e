"""Top-k recommendations with already-seen items filtered out, written in chunks with original ids.

Output columns: user, rank (1-based), item, score, fallback; equal scores rank the lower item id
first. A user with no history (no input interactions: nothing for the model to go on) gets the
most popular unseen training items instead, with fallback = 1. TSV or Parquet by the file's suffix; written to a
temporary file renamed into place, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recscale.data.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.evaluation.metrics import top_k
from recscale.evaluation.protocols import dense_rows
from recscale.fsutil import atomic_file
from recscale.models.base import Recommender

FORMATS = (".tsv", ".parquet")


def history_splits(data: PreparedDataset) -> tuple[str, ...]:
    """Every split that holds interactions the user really had (all are masked)."""
    skip = ("users", "items")
    return tuple(p for p in data.meta["files"] if p not in skip and not p.endswith("_negatives"))


class _Writer:
    def __init__(self, path: Path, fmt: str):
        self.fmt, self.path = fmt, path
        self.schema = pa.schema([("user", pa.int64()), ("rank", pa.int32()), ("item", pa.int64()),
                                 ("score", pa.float32()), ("fallback", pa.int8())])
        if fmt == ".parquet":
            self.parquet = pq.ParquetWriter(path, self.schema)
        else:
            self.handle = open(path, "w")
            self.handle.write("user\trank\titem\tscore\tfallback\n")

    def write(self, users: np.ndarray, ranks: np.ndarray, items: np.ndarray, scores: np.ndarray,
              fallback: np.ndarray) -> None:
        if self.fmt == ".parquet":
            self.parquet.write_table(pa.table([users, ranks.astype(np.int32), items, scores.astype(np.float32),
                                               fallback.astype(np.int8)], schema=self.schema))
        else:
            lines = ["\t".join(row) for row in zip(users.astype(str), ranks.astype(str), items.astype(str),
                                                   np.char.mod("%.6g", scores), fallback.astype(int).astype(str))]
            self.handle.write("\n".join(lines) + "\n")

    def close(self) -> None:
        if self.fmt == ".parquet":
            self.parquet.close()
        else:
            self.handle.close()


@torch.no_grad()
def recommend(model: Recommender, data: PreparedDataset, users: np.ndarray, k: int, out: str | Path,
              device="cpu", batch_size: int = 1024) -> int:
    """Write the top-`k` unseen items for each contiguous user id in `users`; return rows written."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise RecscaleError(f"--out: {out.name}: use a .tsv or .parquet file name")
    model.eval()
    seen = data.user_items(*history_splits(data))
    inputs = seen if data.protocol != "vae" else data.user_items(*[p for p in history_splits(data) if "heldout" not in p])
    k = min(k, data.n_items)
    user_ids, item_ids = data.original_user_ids(), data.original_item_ids()
    history_size = np.diff(inputs.indptr)
    popularity = torch.from_numpy(np.asarray(data.user_items("train").sum(axis=0)).ravel()).float().to(device)
    rows = 0
    with atomic_file(out) as tmp:
        writer = _Writer(tmp, out.suffix)
        try:
            for start in range(0, users.size, batch_size):
                u = users[start:start + batch_size]
                history = dense_rows(inputs, u, device) if model.needs_history else None
                scores = model.score(torch.from_numpy(u).to(device), history).float()
                empty = torch.from_numpy(history_size[u] == 0).to(device)  # (B,) nothing to go on
                scores = torch.where(empty[:, None], popularity.expand_as(scores), scores)
                scores = scores.masked_fill(dense_rows(seen, u, device) > 0, float("-inf"))
                # ties go to the lower item id (metrics.top_k's rule), so the output is deterministic
                index = top_k(scores, torch.zeros_like(scores, dtype=torch.bool), k)
                values = torch.gather(scores, 1, index)  # (B, k)
                valid = torch.isfinite(values).cpu().numpy()  # fewer than k unseen items
                n = u.size
                writer.write(np.repeat(user_ids[u], k)[valid.ravel()],
                             np.tile(np.arange(1, k + 1), n)[valid.ravel()],
                             item_ids[index.cpu().numpy()].ravel()[valid.ravel()],
                             values.cpu().numpy().ravel()[valid.ravel()],
                             np.repeat(empty.cpu().numpy(), k)[valid.ravel()])
                rows += int(valid.sum())
        finally:
            writer.close()
    return rows

"""Top-k recommendations with already-seen items filtered out, with original ids.

Columns: user, rank (1-based), item, score, fallback, then the item features the dataset has
(title; genres joined by "|") unless `columns` chooses fewer; equal scores rank the lower item id first. A
user with no history (no input interactions: nothing for the model to go on) gets the most popular
unseen training items instead, with fallback = 1. Original ids are integers or strings, as the
raw data had them. Users given by their histories (`Histories`, `recommend --histories FILE`) are
scored from those items alone, as new users: history models read them, pairwise models fold them
in (models/foldin.py); their items are the seen ones. `recommend` writes TSV or Parquet by the file's suffix, batch by batch into a
temporary file renamed into place (a failed run leaves nothing half-written); `recommend_frame`
returns a Polars frame.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch

from recscale.data.dataset.prepared import PreparedDataset
from recscale.errors import RecscaleError
from recscale.evaluation.blocks import SCORE_BLOCK_BYTES, RowBlocks, blocked_width, rank_in_blocks
from recscale.evaluation.protocols import batch_scorer, scorable_users, trained_users
from recscale.fsutil import atomic_file, check_output
from recscale.models.base import Recommender
from recscale.progress import bar

FORMATS = (".tsv", ".parquet")
COLUMNS = ("user", "rank", "item", "score", "fallback")
ITEM_FEATURES = ("title", "genres")  # what `columns` may add, in this order
HEADER_WORDS = ("user", "userid", "user_id")


def history_splits(data: PreparedDataset) -> tuple[str, ...]:
    """Every split that holds interactions the user really had (all are masked)."""
    skip = ("users", "items")
    return tuple(p for p in data.meta["files"] if p not in skip and not p.endswith("_negatives"))


def _read_lines(path: str | Path, flag: str, expected: str) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except IsADirectoryError:
        raise RecscaleError(f"{flag}: {path}: is a directory, expected {expected}") from None
    except OSError as exc:
        raise RecscaleError(f"{flag}: {path}: cannot read: {exc.strerror}") from None


def _id_key(text: str, integer: bool) -> str | None:
    """How an original id is looked up: integer ids as integers ("007" is 7); None for text that
    is no integer where the ids are."""
    if not integer:
        return text
    try:
        return str(int(text))
    except ValueError:
        return None


def read_user_file(path: str | Path, data: PreparedDataset, report=None) -> np.ndarray:
    """Contiguous ids of the users listed in `path` (one original id per line, optional header);
    malformed or unknown ids are reported line by line to `report` and skipped."""
    report = report or sys.stderr
    ids = data.original_user_ids()
    integer = ids.dtype.kind in "iu"
    lookup = {str(u): i for i, u in enumerate(ids.tolist())}
    found: list[int] = []
    for number, line in enumerate(_read_lines(path, "--users", "a file of user ids"), 1):
        text = line.strip().lstrip("\ufeff")
        if not text or (number == 1 and text.lower() in HEADER_WORDS and text not in lookup):
            continue
        key = _id_key(text, integer)
        if key is None:
            print(f"{path}:{number}: not a user id: {text!r} (skipped)", file=report)
            continue
        if key not in lookup:
            print(f"{path}:{number}: unknown user id {text!r} (skipped)", file=report)
            continue
        found.append(lookup[key])
    return np.array(found, dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Histories:
    """Users given by what they did rather than by id: original ids (B,) and their items as a CSR
    (B, I) over the dataset's contiguous item ids."""

    ids: np.ndarray
    rows: sp.csr_matrix

    @classmethod
    def of(cls, histories: dict, data: PreparedDataset, source: str = "histories") -> "Histories":
        """From {user id: [original item ids]}; an unknown item is refused in one line."""
        lookup, integer = _item_lookup(data)
        items_of = {}
        for user, items in histories.items():
            keys = [_id_key(str(item), integer) for item in items]
            unknown = next((item for item, key in zip(items, keys) if key not in lookup), None)
            if unknown is not None:
                raise RecscaleError(f"{source}: user {user!r}: unknown item id {unknown!r}")
            items_of[user] = {lookup[key] for key in keys}
        return cls._build(items_of, data)

    @classmethod
    def _build(cls, items_of: dict, data: PreparedDataset) -> "Histories":
        """From {user: set of contiguous item ids}."""
        users = list(items_of)
        lengths = np.array([len(items_of[u]) for u in users], dtype=np.int64)
        indices = np.array([i for u in users for i in sorted(items_of[u])], dtype=np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        rows = sp.csr_matrix((np.ones(indices.size, dtype=np.float32), indices, indptr), shape=(len(users), data.n_items))
        integer = data.original_user_ids().dtype.kind in "iu" and all(_id_key(str(u), True) is not None for u in users)
        ids = np.array([int(u) for u in users], dtype=np.int64) if integer else np.array([str(u) for u in users], dtype=object)
        return cls(ids, rows)


def _item_lookup(data: PreparedDataset) -> tuple[dict[str, int], bool]:
    """(original item id as text -> contiguous id, whether the ids are integers)."""
    ids = data.original_item_ids()
    return {str(i): n for n, i in enumerate(ids.tolist())}, ids.dtype.kind in "iu"


def read_histories_file(path: str | Path, data: PreparedDataset, report=None) -> Histories:
    """Histories from a file of `user<TAB or ,>item` lines (original ids, an optional header,
    a user's lines anywhere in the file); malformed lines and unknown items are reported line by
    line to `report` and skipped."""
    report = report or sys.stderr
    lookup, integer_items = _item_lookup(data)
    items_of: dict[str, set[int]] = {}
    for number, line in enumerate(_read_lines(path, "--histories", "a file of user, item lines"), 1):
        text = line.strip().lstrip("\ufeff")
        if not text:
            continue
        fields = [f.strip() for f in text.replace(",", "\t").split("\t")]
        if number == 1 and fields[0].lower() in HEADER_WORDS:
            continue
        if len(fields) < 2 or not fields[0] or not fields[1]:
            print(f"{path}:{number}: expected user and item separated by a tab or a comma: {text!r} (skipped)",
                  file=report)
            continue
        user, item = fields[0], fields[1]
        key = _id_key(item, integer_items)
        if key not in lookup:
            print(f"{path}:{number}: unknown item id {item!r} (skipped)", file=report)
            continue
        items_of.setdefault(user, set()).add(lookup[key])
    return Histories._build(items_of, data)


def item_columns(data: PreparedDataset, columns: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """The item features written beside each recommended item, as text indexed by contiguous item
    id: `columns` of ITEM_FEATURES (None: every one the dataset has)."""
    items = data.table("items")
    available = [c for c in ITEM_FEATURES if c in items.columns]
    chosen = available if columns is None else list(columns)
    unknown = [c for c in chosen if c not in available]
    if unknown:
        raise RecscaleError(f"--columns: {unknown[0]!r} is not an item feature of {data.root} "
                            f"(it has: {', '.join(available) or 'none'})")
    items = items.sort("item")
    out = {}
    for name in chosen:
        if name == "genres":  # genre ids back to their names, as the server answers them
            vocabulary = pl.Series(data.meta["features"]["genres"]["vocabulary"])
            text = items["genres"].list.eval(pl.lit(vocabulary).gather(pl.element())).list.join("|")
        else:
            text = items[name].cast(pl.Utf8)
        out[name] = text.fill_null("").str.replace_all(r"[\t\r\n]", " ").to_numpy().astype(object)
    return out


def _arrow_type(ids: np.ndarray) -> pa.DataType:
    return pa.int64() if ids.dtype.kind in "iu" else pa.string()


def _check_fold_in(model: Recommender, histories: Histories | None) -> None:
    if histories is not None and not model.scores_new_users:
        raise RecscaleError(f"--histories: {type(model).__name__} cannot score users it was not trained on")


def model_inputs(data: PreparedDataset):
    """(what a model reads of each user, everything the user is known to have interacted with):
    CSR matrices over all users. Under vae the held-out users' held-out items are seen, not read."""
    seen = data.rows(*history_splits(data))
    inputs = seen if data.protocol != "vae" else data.rows(*[p for p in history_splits(data) if "heldout" not in p])
    return inputs, seen


@torch.no_grad()
def recommendation_batches(model: Recommender, data: PreparedDataset, users: np.ndarray, k: int,
                           device="cpu", batch_size: int = 1024, columns: tuple[str, ...] | None = None,
                           block_bytes: int = SCORE_BLOCK_BYTES, histories: Histories | None = None
                           ) -> Iterator[dict[str, np.ndarray]]:
    """The top-`k` unseen items of each contiguous user id in `users` (or of each of `histories`'
    users, `users` then indexing them), a batch of users at a time, as columns with original ids
    and the item features `columns` names (`item_columns`); no (users x items) block of scores
    larger than `block_bytes`."""
    model.eval()
    _check_fold_in(model, histories)
    features = item_columns(data, columns)
    k = min(k, data.n_items)
    item_ids = data.original_item_ids()
    if histories is None:
        inputs, seen = model_inputs(data)
        user_ids, trained = data.original_user_ids(), trained_users(data)
        able = scorable_users(model, data, inputs)  # the others get the popular fallback
    else:  # every one of them new to the model, its items all it has to go on
        inputs = seen = histories.rows
        user_ids, trained = histories.ids, np.zeros(inputs.shape[0], dtype=bool)
        able = np.diff(inputs.indptr) > 0
    popularity = torch.from_numpy(data.item_counts()).float().to(device)
    with bar(total=users.size, desc="recommend", unit="user") as shown:  # closed also if the caller stops early
        for start in range(0, users.size, batch_size):
            u = users[start:start + batch_size]
            shown.update(u.size)
            empty = torch.from_numpy(~able[u]).to(device)  # (B,) nothing to go on
            scorer = batch_scorer(model, u, inputs, trained, block_bytes, device)

            def blend(items: slice | torch.Tensor, scorer=scorer, empty=empty) -> torch.Tensor:
                scores = scorer(items).float()  # (B, b)
                return torch.where(empty[:, None], popularity[items].expand_as(scores), scores)
            # in item blocks with the tie rule (evaluation/blocks.py): ties go to the lower item id
            index, values, _, _ = rank_in_blocks(blend, u.size, data.n_items, k,
                                                 blocked_width(u.size, data.n_items, block_bytes),
                                                 RowBlocks(seen, u, device), device=device)
            valid = torch.isfinite(values).cpu().numpy().ravel()  # fewer than k unseen items
            chosen = index.cpu().numpy().ravel()[valid]  # (rows,) contiguous item ids
            yield {"user": np.repeat(user_ids[u], k)[valid],
                   "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), u.size)[valid],
                   "item": item_ids[chosen],
                   "score": values.cpu().numpy().ravel()[valid].astype(np.float32),
                   "fallback": np.repeat(empty.cpu().numpy(), k)[valid].astype(np.int8),
                   **{name: text[chosen] for name, text in features.items()}}


def is_recommendations(path: Path) -> bool:
    """A file `recommend` wrote: a TSV whose header is COLUMNS, or a Parquet file with them."""
    if not path.is_file():
        return False
    try:
        if path.suffix == ".parquet":
            return tuple(pq.read_schema(path).names[:len(COLUMNS)]) == COLUMNS
        with open(path, "rb") as handle:
            return handle.readline(256).rstrip(b"\r\n").split(b"\t")[:len(COLUMNS)] == [c.encode() for c in COLUMNS]
    except (OSError, pa.ArrowException):
        return False


def recommend(model: Recommender, data: PreparedDataset, users: np.ndarray, k: int, out: str | Path,
              device="cpu", batch_size: int = 1024, overwrite: bool = False, inputs=(),
              columns: tuple[str, ...] | None = None, block_bytes: int = SCORE_BLOCK_BYTES,
              histories: Histories | None = None) -> int:
    """Write the top-`k` unseen items for each contiguous user id in `users` (indexing `histories`
    when given); return rows written.
    An existing `out` is replaced only with `overwrite` and only when `recommend` wrote it; `out`
    may not be any of `inputs` (the run, the dataset, the users file) nor contain them."""
    out = Path(out)
    if out.suffix not in FORMATS:
        raise RecscaleError(f"--out: {out.name}: use a .tsv or .parquet file name")
    if out.is_dir():
        raise RecscaleError(f"{out}: is a directory, expected a file name")
    check_output(out, "recommendations file", is_recommendations, overwrite, (data.root, *inputs))
    _check_fold_in(model, histories)
    extra = tuple(item_columns(data, columns))
    user_ids = data.original_user_ids() if histories is None else histories.ids
    schema = pa.schema([("user", _arrow_type(user_ids)), ("rank", pa.int32()),
                        ("item", _arrow_type(data.original_item_ids())), ("score", pa.float32()),
                        ("fallback", pa.int8()), *[(name, pa.string()) for name in extra]])
    rows = 0
    with atomic_file(out) as tmp:
        if out.suffix == ".parquet":
            with pq.ParquetWriter(tmp, schema) as writer:
                for batch in recommendation_batches(model, data, users, k, device, batch_size, extra, block_bytes,
                                                    histories):
                    writer.write_table(pa.table([batch[c] for c in schema.names], schema=schema))
                    rows += batch["rank"].size
        else:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write("\t".join(schema.names) + "\n")
                for batch in recommendation_batches(model, data, users, k, device, batch_size, extra, block_bytes,
                                                    histories):
                    if batch["rank"].size:
                        text = zip(batch["user"].astype(str), batch["rank"].astype(str), batch["item"].astype(str),
                                   np.char.mod("%.6g", batch["score"]), batch["fallback"].astype(str),
                                   *[batch[name] for name in extra])
                        handle.write("\n".join("\t".join(row) for row in text) + "\n")
                    rows += batch["rank"].size
    return rows


def recommend_frame(model: Recommender, data: PreparedDataset, users: np.ndarray, k: int, device="cpu",
                    batch_size: int = 1024, columns: tuple[str, ...] | None = None,
                    block_bytes: int = SCORE_BLOCK_BYTES, histories: Histories | None = None) -> pl.DataFrame:
    """The same recommendations as a Polars frame (in memory: for notebooks and services)."""
    extra = tuple(item_columns(data, columns))
    parts = [pl.DataFrame(batch) for batch in recommendation_batches(model, data, users, k, device, batch_size,
                                                                     extra, block_bytes, histories)]
    if not parts:
        return pl.DataFrame({c: [] for c in (*COLUMNS, *extra)})
    return pl.concat(parts)

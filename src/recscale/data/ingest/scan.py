"""Raw inputs as lazy Polars scans, for the streaming engine of `prepare`: delimited files, Parquet,
the MovieLens formats and the embedded dataset, with the in-memory readers' column rules and checks.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

import polars as pl

from recscale.data.ingest.readers import (
    INTERACTION_KINDS,
    column_names,
    epoch_seconds,
    first_bad_line,
    require_columns,
    table_problem,
    temporal_seconds,
    time_kind,
)
from recscale.errors import RecscaleError


@dataclasses.dataclass
class ScanSource:
    """A raw interactions input that can be scanned lazily.

    `lazy(text_ids)` gives columns user, item (Int64, or Utf8 when `text_ids` names the column),
    rating (Float64), timestamp (Int64) and `_line` (the row's place in the input, blank lines
    counted); `diagnose()` walks the input and names the first bad line ('' when none)."""

    name: str
    files: tuple[Path, ...]
    lazy: Callable[[frozenset], pl.LazyFrame]
    diagnose: Callable[[], str]
    items: pl.DataFrame | None = None
    text_ids: frozenset = frozenset()  # columns known to hold text ids (formats with text keys)

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files if p.exists())


def scan_delimited(path: Path, sep: str, names: dict[str, str] | None, kinds: dict[str, str],
                   items: pl.DataFrame | None = None, name: str | None = None) -> ScanSource:
    """A delimited file: with `names` (canonical -> header name) it has a header, without them its
    leading columns are `kinds` in order. A doubled separator ('::') is read as ':' with every other
    column, as the in-memory reader does."""
    path = Path(path)
    wide = len(sep) == 2 and sep[0] == sep[1]
    checks = {}

    def lazy(text_ids: frozenset) -> pl.LazyFrame:
        options = {"separator": sep[0], "has_header": names is not None,
                   "quote_char": '"' if sep == "," else None, "infer_schema": False}
        frame = pl.scan_csv(path, **options).with_row_index("_line")
        columns = []
        for position, (column, kind) in enumerate(kinds.items()):
            source = pl.col(names[column]) if names is not None else pl.nth(1 + position * (2 if wide else 1))
            if kind.startswith("time:"):
                columns.append(epoch_seconds(source.str.strip_chars("\r"), kind).alias(column))
                continue
            dtype = pl.Utf8 if column in text_ids else {"int": pl.Int64, "id": pl.Int64, "float": pl.Float64}[kind]
            columns.append(source.str.strip_chars("\r").cast(dtype).alias(column))
        frame = frame.select("_line", *columns)
        frame = frame.filter(~pl.all_horizontal(pl.exclude("_line").is_null()))  # blank lines
        return _canonical(frame, kinds)

    def diagnose() -> str:
        if names is not None:
            header = pl.read_csv(path, n_rows=0, separator=sep[0]).columns
            checks.update({names[c]: (header.index(names[c]), kind) for c, kind in kinds.items()})
        else:
            checks.update({c: (i * (2 if wide else 1), kind) for i, (c, kind) in enumerate(kinds.items())})
        return first_bad_line(path, sep, checks, names is not None)

    return ScanSource(name or path.stem, (path,), lazy, diagnose, items)


def scan_parquet(path: Path, names: dict[str, str], items: pl.DataFrame | None = None) -> ScanSource:
    path = Path(path)

    def lazy(text_ids: frozenset) -> pl.LazyFrame:
        frame = pl.scan_parquet(path).with_row_index("_line")
        schema = frame.collect_schema()
        columns = []
        for column, source in names.items():
            expr = pl.col(source)
            if column in ("user", "item"):
                expr = expr.cast(pl.Utf8 if column in text_ids or schema[source] == pl.Utf8 else pl.Int64)
            elif column == "timestamp" and schema[source].is_temporal():
                expr = temporal_seconds(expr, schema[source])
            columns.append(expr.alias(column))
        return _canonical(frame.select("_line", *columns), {c: "float" if c == "rating" else "int" for c in names})

    schema = pl.read_parquet_schema(path)
    require_columns(path, list(schema), list(names.values()))
    # the in-memory reader's checks, in one streamed pass: both engines take and refuse the same tables
    problem = table_problem(pl.scan_parquet(path).select(pl.col(s).alias(c) for c, s in names.items()), names,
                            str(path))
    if problem:
        raise RecscaleError(problem)
    text = frozenset(c for c, source in names.items() if c in ("user", "item") and schema.get(source) == pl.Utf8)
    return ScanSource(path.stem, (path,), lazy, lambda: "", items, text)


def _canonical(frame: pl.LazyFrame, kinds: dict[str, str]) -> pl.LazyFrame:
    if "rating" not in kinds:
        frame = frame.with_columns(pl.lit(1.0).alias("rating"))
    if "timestamp" not in kinds:
        frame = frame.with_columns(pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    return frame.select("_line", "user", "item", pl.col("rating").cast(pl.Float64),
                        pl.col("timestamp").cast(pl.Int64))


MOVIELENS_COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}


def ratings_source(path: str | Path, sep: str = ",", user_col: str = "userId", item_col: str = "movieId",
                   rating_col: str | None = "rating", time_col: str | None = "timestamp",
                   items: pl.DataFrame | None = None, time_format: str | None = None) -> ScanSource:
    """`--ratings FILE` (CSV/TSV with a header, or Parquet) with the same column flags as the
    in-memory reader."""
    path = Path(path)
    if not path.is_file():
        raise RecscaleError(f"{path}: file not found")
    names = column_names(user_col, item_col, rating_col, time_col)
    if path.suffix == ".parquet":
        present = set(pl.read_parquet_schema(path))
        missing = [c for c in names.values() if c not in present]
        if missing:
            raise RecscaleError(f"{path}: missing column(s) {', '.join(missing)}")
        return scan_parquet(path, names, items)
    header = pl.read_csv(path, n_rows=0, separator=sep[0]).columns
    missing = [c for c in names.values() if c not in header]
    if missing:
        raise RecscaleError(f"{path}: missing column(s) {', '.join(missing)} (header: {', '.join(header)})")
    kinds = {c: time_kind(time_format) if c == "timestamp" else INTERACTION_KINDS[c] for c in names}
    return scan_delimited(path, sep, names, kinds, items)


def format_source(name: str, root: str | Path) -> ScanSource | None:
    """The scannable source of a published format's ratings (None: the format is read in memory
    only). Item tables are small and read as the in-memory path reads them."""
    from recscale.data.ingest.formats import read_movies_dat, read_u_item
    from recscale.data.ingest.readers import read_movies_csv
    root = Path(root)
    layouts = {"movielens-csv": ("ratings.csv", "movies.csv", read_movies_csv),
               "movielens-dat": ("ratings.dat", "movies.dat", read_movies_dat),
               "movielens-100k": ("u.data", "u.item", read_u_item)}
    if name not in layouts:
        return None
    data_name, items_name, read_items = layouts[name]
    data, items_path = root / data_name, root / items_name
    if not data.is_file() or not items_path.is_file():
        return None  # the in-memory reader names what is missing
    items = read_items(items_path)
    if name == "movielens-csv":
        source = scan_delimited(data, ",", MOVIELENS_COLUMNS, INTERACTION_KINDS, items, root.name)
    else:
        source = scan_delimited(data, "::" if name == "movielens-dat" else "\t", None, INTERACTION_KINDS, items,
                                root.name)
    source.files = (data, items_path)
    return source


def embedded_source() -> ScanSource:
    from recscale.data.ingest.readers import canonical_movies
    from recscale.data.ingest.sources import EMBEDDED_DIR
    root = EMBEDDED_DIR / "ml-latest-small"
    source = scan_parquet(root / "ratings.parquet", MOVIELENS_COLUMNS,
                          canonical_movies(pl.read_parquet(root / "movies.parquet")))
    source.name, source.files = "ml-latest-small", (root / "ratings.parquet", root / "movies.parquet")
    return source

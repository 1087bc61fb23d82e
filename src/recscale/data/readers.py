"""Raw published formats -> Polars tables with the canonical columns.

Interactions: `user` and `item` (original ids, Int64), `rating` (Float32), `timestamp` (Int64).
Items: `item` (original id), `title`, `genres` (list of strings, the multi-hot feature).

The fast path is one typed Polars read. Only when it fails do we walk the file with the csv module,
which is slow but finds the exact line and says what is wrong with it.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import polars as pl

from recscale.errors import RecscaleError

RATINGS_COLUMNS = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
RATINGS_SCHEMA = {"userId": pl.Int64, "movieId": pl.Int64, "rating": pl.Float64, "timestamp": pl.Int64}
NO_GENRES = "(no genres listed)"


def _header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            line = handle.readline()
    except FileNotFoundError:
        raise RecscaleError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise RecscaleError(f"{path}: is a directory, expected a CSV file") from None
    except UnicodeDecodeError:
        raise RecscaleError(f"{path}:1: header is not UTF-8 text") from None
    except OSError as exc:
        raise RecscaleError(f"{path}: cannot read file: {exc.strerror}") from None
    if not line.strip():
        raise RecscaleError(f"{path}: file is empty (expected a header line)")
    return next(csv.reader([line]))


def _require_columns(path: Path, header: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise RecscaleError(f"{path}:1: missing column(s) {', '.join(missing)} "
                            f"(expected {','.join(required)}; found {','.join(h for h in header if h)})")


def _first_bad_line(path: Path, header: list[str], checks: dict[str, str]) -> str:
    """Walk the file and describe the first line that does not parse. `checks` maps a column to
    'int' or 'float' (floats must be finite)."""
    index = {name: header.index(name) for name in checks}
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        next(reader)
        for row in reader:
            line = reader.line_num
            if not row or all(not cell.strip() for cell in row):
                continue
            for name, kind in checks.items():
                pos = index[name]
                if pos >= len(row) or not row[pos].strip():
                    return f"{path}:{line}: missing value for {name}"
                text = row[pos].strip()
                try:
                    value = int(text) if kind == "int" else float(text)
                except ValueError:
                    return f"{path}:{line}: {name} is not {'an integer' if kind == 'int' else 'a number'}: {text!r}"
                if kind == "float" and not math.isfinite(value):
                    return f"{path}:{line}: {name} is not a finite number: {text!r}"
                if kind == "int" and not -(2**63) <= value < 2**63:
                    return f"{path}:{line}: {name} is out of the 64-bit integer range: {text!r}"
    return ""


def read_ratings_csv(path: str | Path) -> pl.DataFrame:
    """Read a CSV in MovieLens' ratings.csv layout (`userId,movieId,rating,timestamp`; extra
    columns are ignored)."""
    path = Path(path)
    header = _header(path)
    _require_columns(path, header, list(RATINGS_COLUMNS))
    checks = {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"}
    try:
        frame = pl.read_csv(path, columns=list(RATINGS_COLUMNS), schema_overrides=RATINGS_SCHEMA)
        bad = frame.null_count().sum_horizontal().item() > 0 or frame["rating"].is_nan().any() \
            or frame["rating"].is_infinite().any()
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        problem = _first_bad_line(path, header, checks)
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if bad:
        raise RecscaleError(_first_bad_line(path, header, checks) or f"{path}: empty or invalid values")
    if frame.height == 0:
        raise RecscaleError(f"{path}: no rows after the header")
    return canonical_ratings(frame)


def canonical_ratings(frame: pl.DataFrame) -> pl.DataFrame:
    """Rename MovieLens columns to the canonical ones and fix their types."""
    return frame.select(
        pl.col("userId").cast(pl.Int64).alias("user"),
        pl.col("movieId").cast(pl.Int64).alias("item"),
        pl.col("rating").cast(pl.Float32).alias("rating"),
        pl.col("timestamp").cast(pl.Int64).alias("timestamp"),
    )


def read_movies_csv(path: str | Path) -> pl.DataFrame:
    """Read MovieLens' movies.csv (`movieId,title,genres`, genres '|'-separated)."""
    path = Path(path)
    header = _header(path)
    _require_columns(path, header, ["movieId", "title", "genres"])
    try:
        frame = pl.read_csv(path, columns=["movieId", "title", "genres"],
                            schema_overrides={"movieId": pl.Int64, "title": pl.Utf8, "genres": pl.Utf8})
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        problem = _first_bad_line(path, header, {"movieId": "int"})
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if frame["movieId"].null_count():
        raise RecscaleError(_first_bad_line(path, header, {"movieId": "int"}) or f"{path}: empty movieId")
    return canonical_movies(frame)


def canonical_movies(frame: pl.DataFrame) -> pl.DataFrame:
    genres = pl.col("genres").fill_null("").str.split("|").list.eval(
        pl.element().filter((pl.element() != "") & (pl.element() != NO_GENRES)))
    return frame.select(pl.col("movieId").cast(pl.Int64).alias("item"),
                        pl.col("title").fill_null(""), genres.alias("genres"))

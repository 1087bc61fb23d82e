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

NO_GENRES = "(no genres listed)"


def _header(path: Path, sep: str = ",") -> list[str]:
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
    return _split(line.rstrip("\r\n"), sep)


def _require_columns(path: Path, header: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise RecscaleError(f"{path}:1: missing column(s) {', '.join(missing)} "
                            f"(expected {','.join(required)}; found {','.join(h for h in header if h)})")


KINDS = {"int": pl.Int64, "float": pl.Float64, "str": pl.Utf8}
INTERACTION_KINDS = {"user": "int", "item": "int", "rating": "float", "timestamp": "int"}  # in file order


def _split(line: str, sep: str) -> list[str]:
    if sep == ",":  # quoted fields are legal in CSV
        return next(csv.reader([line]))
    return line.split(sep)


def _problem(text: str, name: str, kind: str) -> str:
    if not text.strip():
        return f"missing value for {name}"
    if kind == "str":
        return ""
    try:
        value = int(text) if kind == "int" else float(text)
    except ValueError:
        return f"{name} is not {'an integer' if kind == 'int' else 'a number'}: {text.strip()!r}"
    if kind == "float" and not math.isfinite(value):
        return f"{name} is not a finite number: {text.strip()!r}"
    if kind == "int" and not -(2**63) <= value < 2**63:
        return f"{name} is out of the 64-bit integer range: {text.strip()!r}"
    return ""


def first_bad_line(path: Path, sep: str, checks: dict[str, tuple[int, str]], has_header: bool) -> str:
    """Walk the file and describe the first line that does not parse. `checks` maps a column name
    to its position and kind ('int', 'float' (finite) or 'str')."""
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, 1):
            line = line.rstrip("\r\n")
            if (has_header and number == 1) or not line.strip():
                continue
            row = _split(line, sep)
            for name, (pos, kind) in checks.items():
                problem = _problem(row[pos] if pos < len(row) else "", name, kind)
                if problem:
                    return f"{path}:{number}: {problem}"
    return ""


def read_delimited(path: str | Path, sep: str, fields: dict[str, str], names: dict[str, str] | None = None) -> pl.DataFrame:
    """The typed columns `fields` (canonical name -> kind) of a delimited file.

    Without `names` the file has no header and `fields` are its leading columns in order; with
    `names` (canonical -> header name) the header picks them. A two-character separator such as
    MovieLens' '::' is read as ':' with every other column, which is exact for numeric columns.
    Blank lines are skipped; any other unparseable line is reported as file:line."""
    path = Path(path)
    if names is not None:
        header = _header(path, sep)
        _require_columns(path, header, list(names.values()))
        positions = {c: header.index(names[c]) for c in fields}
    else:
        if not path.is_file():
            _header(path)  # the same one-line errors for missing files and directories
        positions = {c: i for i, c in enumerate(fields)}
    checks = {(names or {}).get(c, c): (positions[c], kind) for c, kind in fields.items()}
    wide = len(sep) == 2 and sep[0] == sep[1]
    if wide and any(kind == "str" for kind in fields.values()):
        raise ValueError("a doubled separator is only exact for numeric columns")
    try:
        read_at = {c: positions[c] * (2 if wide else 1) for c in fields}
        options = {"separator": sep[0], "has_header": names is not None, "quote_char": '"' if sep == "," else None}
        # Polars names headerless columns itself (the scheme changed across versions): ask it.
        default_names = pl.read_csv(path, n_rows=1, infer_schema=False, **options).columns
        source = {c: default_names[read_at[c]] for c in fields}
        frame = pl.read_csv(path, columns=[source[c] for c in fields], **options,
                            schema_overrides={source[c]: KINDS[kind] for c, kind in fields.items()})
        frame = frame.select(pl.col(source[c]).alias(c) for c in fields)
        frame = frame.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines
        floats = [c for c, kind in fields.items() if kind == "float"]
        bad = frame.null_count().sum_horizontal().item() > 0 or any(
            frame[c].is_nan().any() or frame[c].is_infinite().any() for c in floats)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        problem = first_bad_line(path, sep, checks, names is not None)
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if bad:
        raise RecscaleError(first_bad_line(path, sep, checks, names is not None) or f"{path}: empty or invalid values")
    if frame.height == 0:
        raise RecscaleError(f"{path}: no rows" + (" after the header" if names is not None else ""))
    return frame


def read_ratings_csv(path: str | Path) -> pl.DataFrame:
    """Read a CSV in MovieLens' ratings.csv layout (`userId,movieId,rating,timestamp`; extra
    columns are ignored)."""
    frame = read_delimited(path, ",", INTERACTION_KINDS,
                           names={"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"})
    return canonical_interactions(frame)


def canonical_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """Canonical column types (user, item: Int64; rating: Float32; timestamp: Int64)."""
    return frame.select(pl.col("user").cast(pl.Int64), pl.col("item").cast(pl.Int64),
                        pl.col("rating").cast(pl.Float32), pl.col("timestamp").cast(pl.Int64))


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
        problem = first_bad_line(path, ",", {"movieId": (header.index("movieId"), "int")}, True)
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if frame["movieId"].null_count():
        raise RecscaleError(first_bad_line(path, ",", {"movieId": (header.index("movieId"), "int")}, True)
                            or f"{path}: empty movieId")
    return canonical_movies(frame)


def canonical_movies(frame: pl.DataFrame) -> pl.DataFrame:
    genres = pl.col("genres").fill_null("").str.split("|").list.eval(
        pl.element().filter((pl.element() != "") & (pl.element() != NO_GENRES)))
    return frame.select(pl.col("movieId").cast(pl.Int64).alias("item"),
                        pl.col("title").fill_null(""), genres.alias("genres"))


def dense_ids(column: pl.Series) -> pl.Series:
    """Ids 1..n in sorted order of the original keys: stable across runs and machines."""
    return column.rank("dense").cast(pl.Int64)


def _as_ids(column: pl.Series) -> pl.Series:
    """Integer ids as they are (also when stored as text); other ids (hashes, names) numbered in
    sorted order."""
    if column.dtype.is_integer():
        return column
    as_int = column.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == 0 else dense_ids(column)


def _first_id_kind(path: Path, sep: str, column: str) -> str:
    """'int' when the file's first id in `column` is an integer, else 'str'. With 'int' every id must
    be one: a stray word is a malformed line (reported by read_delimited), not a reason to
    renumber every id."""
    header = _header(path, sep)
    if column not in header:
        return "int"  # read_delimited reports the missing column
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        next(handle)
        for line in handle:
            if line.strip():
                row = _split(line.rstrip("\r\n"), sep)
                position = header.index(column)
                value = row[position].strip() if position < len(row) else ""
                return "int" if value.lstrip("-").isdigit() else "str"
    return "int"


def read_interactions(path: str | Path, sep: str = ",", user_col: str = "userId", item_col: str = "movieId",
                      rating_col: str = "rating", time_col: str = "timestamp") -> pl.DataFrame:
    """Any CSV/TSV (header line) or Parquet file with a user and an item column. Without a rating
    column every row is a 1.0 (implicit feedback); without a time column every timestamp is 0.
    Non-integer ids are numbered in sorted order."""
    path = Path(path)
    names = {"user": user_col, "item": item_col}
    fields = {"user": "str", "item": "str"} if path.suffix == ".parquet" else {
        c: _first_id_kind(path, sep, names[c]) for c in ("user", "item")}
    if rating_col:
        names["rating"], fields["rating"] = rating_col, "float"
    if time_col:
        names["timestamp"], fields["timestamp"] = time_col, "int"
    if path.suffix == ".parquet":
        try:
            frame = pl.read_parquet(path)
        except FileNotFoundError:
            raise RecscaleError(f"{path}: file not found") from None
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise RecscaleError(f"{path}: unreadable Parquet: {str(exc).splitlines()[0]}") from None
        _require_columns(path, frame.columns, list(names.values()))
        frame = frame.select(pl.col(names[c]).alias(c) for c in fields)
        if frame.null_count().sum_horizontal().item():
            column = next(c for c in fields if frame[c].null_count())
            row = int(frame.with_row_index().filter(pl.col(column).is_null())["index"][0])
            raise RecscaleError(f"{path}: row {row}: missing value for {names[column]}")
    else:
        frame = read_delimited(path, sep, fields, names=names)

    frame = frame.with_columns(_as_ids(frame["user"]).alias("user"), _as_ids(frame["item"]).alias("item"))
    if not rating_col:
        frame = frame.with_columns(pl.lit(1.0).alias("rating"))
    if not time_col:
        frame = frame.with_columns(pl.lit(0).alias("timestamp"))
    return canonical_interactions(frame)

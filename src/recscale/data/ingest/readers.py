"""Raw published formats -> Polars tables with the canonical columns.

Interactions: `user` and `item` (original ids: Int64 when every id of the column is an integer,
otherwise the ids' text, Utf8, kept exactly), `rating` (Float32), `timestamp` (Int64).
Items: `item` (original id), `title`, `genres` (list of strings, the multi-hot feature).

The fast path is one typed Polars read. Only when it fails do we walk the file with the csv module,
which is slow but finds the exact line and says what is wrong with it.
"""

from __future__ import annotations

import csv
import datetime
import math
from pathlib import Path

import polars as pl

from recscale.errors import RecscaleError

NO_GENRES = "(no genres listed)"


def _header(path: Path, sep: str = ",") -> list[str]:
    try:
        with open(path, "rb") as handle:  # decode the first line only: a bad byte further on is its own line's problem
            line = _first_line(handle).decode("utf-8").lstrip("\ufeff")
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


def _first_line(handle) -> bytes:
    """The bytes of the first line, ended by \n, \r\n or a lone \r (universal newlines)."""
    data = b""
    while chunk := handle.read(1 << 16):
        data += chunk
        ends = [i for i in (data.find(b"\n"), data.find(b"\r")) if i >= 0]
        if ends:
            return data[:min(ends)]
    return data


def require_columns(path: Path, header: list[str], required: list[str]) -> None:
    missing = [c for c in required if c not in header]
    if missing:
        raise RecscaleError(f"{path}:1: missing column(s) {', '.join(missing)} "
                            f"(expected {','.join(required)}; found {','.join(h for h in header if h)})")


KINDS = {"int": pl.Int64, "float": pl.Float64, "str": pl.Utf8}


def time_kind(time_format: str | None) -> str:
    """The kind of a time column in text: integers (Unix seconds, or any integer clock) by
    default, else `time:FORMAT` with FORMAT 'iso' (ISO 8601 dates and times, with or without an
    offset) or a strftime pattern ('%Y-%m-%d %H:%M:%S')."""
    return f"time:{time_format}" if time_format else "int"


def _strptime_format(kind: str) -> str | None:
    fmt = kind.split(":", 1)[1]
    return None if fmt == "iso" else fmt


def epoch_seconds(expr: pl.Expr, kind: str) -> pl.Expr:
    """Text times of `kind` as Int64 seconds since 1970-01-01 UTC (times without an offset taken
    as UTC). Both prepare engines parse with this one expression."""
    parsed = expr.str.strip_chars().str.to_datetime(format=_strptime_format(kind), strict=True, time_unit="us")
    return parsed.dt.epoch("s")


def temporal_seconds(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """A native date or datetime column (Parquet, a DataFrame) as Int64 seconds since the epoch."""
    return (expr.cast(pl.Datetime("us")) if dtype == pl.Date else expr).dt.epoch("s")


INTERACTION_KINDS = {"user": "int", "item": "int", "rating": "float", "timestamp": "int"}  # in file order


def _split(line: str, sep: str) -> list[str]:
    if sep == ",":  # quoted fields are legal in CSV
        return next(csv.reader([line]))
    return line.split(sep)


def _problem(text: str, name: str, kind: str) -> str:
    if not text.strip():
        return f"missing value for {name}"
    if kind in ("str", "id"):
        return _text_id_problem(text, name) if kind == "id" else ""
    if kind.startswith("time:"):
        fmt = _strptime_format(kind)
        try:
            datetime.datetime.fromisoformat(text.strip()) if fmt is None else datetime.datetime.strptime(text.strip(), fmt)
        except ValueError:
            return f"{name} is not a time in the format {kind[5:]!r} (--time-format): {text.strip()!r}"
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


def _first_undecodable_line(path: Path) -> int:
    """The number of the first line (as a universal-newline reader counts them) that is not
    UTF-8, or 0."""
    with open(path, "rb") as handle:
        data = handle.read()
    try:
        data.decode("utf-8")
        return 0
    except UnicodeDecodeError as exc:
        before = data[:exc.start].decode("utf-8", errors="replace")
        lines = len(before.splitlines())
        return lines + 1 if not before or before.endswith(("\n", "\r")) else lines


def first_bad_line(path: Path, sep: str, checks: dict[str, tuple[int, str]], has_header: bool) -> str:
    """Walk the file and describe the first line that does not parse. `checks` maps a column name
    to its position and kind ('int', 'float' (finite) or 'str')."""
    undecodable = _first_undecodable_line(path)
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for number, line in enumerate(handle, 1):
            if number == undecodable:
                return f"{path}:{number}: not UTF-8 text"
            line = line.lstrip("\ufeff").rstrip("\r\n")
            if (has_header and number == 1) or not line.strip():
                continue
            try:
                row = _split(line, sep)
            except csv.Error as exc:
                return f"{path}:{number}: malformed line: {exc}"
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
        require_columns(path, header, list(names.values()))
        positions = {c: header.index(names[c]) for c in fields}
    else:
        if not path.is_file():
            _header(path)  # the same one-line errors for missing files and directories
        positions = {c: i for i, c in enumerate(fields)}
    checks = {(names or {}).get(c, c): (positions[c], kind) for c, kind in fields.items()}
    wide = len(sep) == 2 and sep[0] == sep[1]
    if wide and any(kind == "str" for kind in fields.values()):
        raise ValueError("a doubled separator is only exact for numeric columns")
    if wide and any(kind == "id" for kind in fields.values()):
        fields = {c: "int" if kind == "id" else kind for c, kind in fields.items()}
    read_at = {c: positions[c] * (2 if wide else 1) for c in fields}
    options = {"separator": sep[0], "has_header": names is not None, "quote_char": '"' if sep == "," else None}

    def attempt(text_ids: bool) -> pl.DataFrame:
        # Polars names headerless columns itself (the scheme changed across versions): ask it.
        default_names = pl.read_csv(path, n_rows=1, infer_schema=False, **options).columns
        source = {c: default_names[read_at[c]] for c in fields}
        types = {source[c]: pl.Utf8 if (kind == "id" and text_ids) or kind.startswith("time:")
                 else KINDS.get(kind, pl.Int64) for c, kind in fields.items()}
        frame = pl.read_csv(path, columns=[source[c] for c in fields], **options, schema_overrides=types)
        frame = frame.select(epoch_seconds(pl.col(source[c]), kind).alias(c) if kind.startswith("time:")
                             else pl.col(source[c]).alias(c) for c, kind in fields.items())
        return frame.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines

    try:
        try:
            frame = attempt(text_ids=False)  # the fast path: integer ids
        except pl.exceptions.PolarsError:
            if not any(kind == "id" for kind in fields.values()):
                raise
            frame = attempt(text_ids=True)  # some ids are not integers: read them as text
            frame = frame.with_columns(integer_ids_or_text(frame[c]) for c, k in fields.items() if k == "id")
        floats = [c for c, kind in fields.items() if kind == "float"]
        bad = frame.null_count().sum_horizontal().item() > 0 or any(
            frame[c].is_nan().any() or frame[c].is_infinite().any() for c in floats) or any(
            frame[c].dtype == pl.Utf8 and frame[c].str.contains(CONTROL).any() for c in fields)
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        problem = first_bad_line(path, sep, checks, names is not None)
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if bad:
        raise RecscaleError(first_bad_line(path, sep, checks, names is not None) or f"{path}: empty or invalid values")
    if frame.height == 0:
        with open(path, "rb") as handle:
            start = handle.read(1 << 16)
        if b"\r" in start and b"\n" not in start:
            raise RecscaleError(f"{path}: lines end with a lone carriage return (old Mac style); convert them to "
                                f"\\n line endings")
        raise RecscaleError(f"{path}: no rows" + (" after the header" if names is not None else ""))
    return frame


CONTROL = r"[\t\r\n\x00-\x08\x0b\x0c\x0e-\x1f]"  # would break every line-based output (TSV, logs)


def _text_id_problem(text: str, name: str) -> str:
    if any(ch in text for ch in "\t\r\n") or any(ord(ch) < 32 for ch in text):
        return f"{name} contains a tab, line break or control character: {text!r}"
    return ""


def integer_ids_or_text(column: pl.Series) -> pl.Series:
    """Integers when every id of the column is one (leading zeros and '+' are then formatting:
    '007' and '7' are the same id); otherwise the ids' text, kept exactly."""
    if column.dtype.is_integer():
        return column.cast(pl.Int64)
    as_int = column.cast(pl.Int64, strict=False)
    return as_int if as_int.null_count() == column.null_count() else column.cast(pl.Utf8)


def read_ratings_csv(path: str | Path) -> pl.DataFrame:
    """Read a CSV in MovieLens' ratings.csv layout (`userId,movieId,rating,timestamp`; extra
    columns are ignored)."""
    frame = read_delimited(path, ",", INTERACTION_KINDS,
                           names={"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"})
    return canonical_interactions(frame)


def id_dtype(dtype: pl.DataType) -> pl.DataType:
    return pl.Int64 if dtype.is_integer() else pl.Utf8


def canonical_interactions(frame: pl.DataFrame) -> pl.DataFrame:
    """Canonical column types (user, item: Int64, or Utf8 for text ids; rating: Float32; timestamp: Int64)."""
    return frame.select(pl.col("user").cast(id_dtype(frame.schema["user"])),
                        pl.col("item").cast(id_dtype(frame.schema["item"])),
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
    require_columns(path, header, ["movieId", "title", "genres"])
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


def column_type_problem(column: str, dtype: pl.DataType) -> str:
    """Why a table column of `dtype` cannot be the canonical `column` ('' when it can): ids are
    integers, integral floats or text; ratings numbers; times numbers, dates or datetimes. Nested,
    binary and other types are refused by name, by both prepare engines."""
    if column == "timestamp" and (dtype == pl.Date or isinstance(dtype, pl.Datetime)):
        return ""
    if column in ("user", "item"):
        ok = dtype.is_integer() or dtype.is_float() or dtype == pl.Utf8
        return "" if ok else f"holds {dtype}, expected integer or text ids"
    return "" if dtype.is_numeric() else f"holds {dtype}, expected numbers"


def _row_rules(column: str, name: str, dtype: pl.DataType) -> list[tuple[pl.Expr, str]]:
    """(mask of bad rows, what is wrong) for one canonical column of a table, in the order checked."""
    col = pl.col(column)
    rules = [(col.is_null(), f"missing value for {name}")]
    if column in ("user", "item") and dtype.is_float():
        rules.append((~col.is_finite() | (col != col.floor()), f"{name} is not an integer id"))
    elif column in ("user", "item") and dtype == pl.Utf8:
        rules.append((col.str.contains(CONTROL), f"{name} contains a tab, line break or control character"))
    elif dtype.is_float():
        integral = column == "timestamp"
        rules.append((~col.is_finite() | ((col != col.floor()) if integral else pl.lit(False)),
                      f"{name} is not {'an integer' if integral else 'a finite number'}"))
    return rules


def table_problem(frame: pl.LazyFrame | pl.DataFrame, names: dict[str, str], where: str) -> str:
    """The first problem of a table whose canonical columns are `names`' keys (named by `names`'
    values in messages): a column's type, else the first bad row ('' when none). One lazy query,
    so the streaming engine checks a file larger than memory exactly as the in-memory one does."""
    frame = frame.lazy()
    schema = frame.collect_schema()
    for column, name in names.items():
        if problem := column_type_problem(column, schema[column]):
            return f"{where}: column {name} {problem}"
    rules = [(column, mask, what) for column, name in names.items() for mask, what in
             _row_rules(column, name, schema[column])]
    flags = [mask.alias(f"_bad{n}") for n, (_, mask, _) in enumerate(rules)]
    bad = (frame.with_row_index("_row").with_columns(flags)
                .filter(pl.any_horizontal(*(f"_bad{n}" for n in range(len(rules)))))
                .head(1).collect(engine="streaming"))
    if bad.height == 0:
        return ""
    column, _, what = next(r for n, r in enumerate(rules) if bad[f"_bad{n}"][0])
    value = "" if what.startswith("missing") or "contains" in what else f": {bad[column][0]!r}"
    return f"{where}: row {int(bad['_row'][0]) + 1}: {what}{value}"


def frame_interactions(frame: pl.DataFrame, where: str, names: dict[str, str] | None = None) -> pl.DataFrame:
    """Canonical interactions from a typed table (Parquet, a DataFrame), checked like a text file:
    ids are integers (integral floats allowed) or text; ratings and times finite; no missing
    values. `names` maps canonical columns to the table's (user and item required); without a
    rating column every row is 1.0, without a time column every timestamp is 0."""
    names = names or {c: c for c in ("user", "item", "rating", "timestamp") if c in frame.columns}
    require_columns(Path(where), frame.columns, list(names.values()))
    frame = frame.select(pl.col(column).alias(c) for c, column in names.items())
    if problem := table_problem(frame, names, where):
        raise RecscaleError(problem)
    frame = frame.with_columns(pl.col(c).cast(pl.Int64) for c in ("user", "item") if frame[c].dtype.is_float())
    if "timestamp" in frame.columns and frame["timestamp"].dtype.is_temporal():
        frame = frame.with_columns(temporal_seconds(pl.col("timestamp"), frame["timestamp"].dtype))
    if frame.height == 0:
        raise RecscaleError(f"{where}: no rows")
    if "rating" not in frame.columns:
        frame = frame.with_columns(pl.lit(1.0).alias("rating"))
    if "timestamp" not in frame.columns:
        frame = frame.with_columns(pl.lit(0).alias("timestamp"))
    return canonical_interactions(frame)


def column_names(user_col: str, item_col: str, rating_col: str | None, time_col: str | None) -> dict[str, str]:
    """Canonical column -> the input's column, from the column flags (an empty rating or time
    column: the input has none)."""
    names = {"user": user_col, "item": item_col}
    if rating_col:
        names["rating"] = rating_col
    if time_col:
        names["timestamp"] = time_col
    return names


def read_interactions(path: str | Path, sep: str = ",", user_col: str = "userId", item_col: str = "movieId",
                      rating_col: str = "rating", time_col: str = "timestamp",
                      time_format: str | None = None) -> pl.DataFrame:
    """Any CSV/TSV (header line) or Parquet file with a user and an item column. Without a rating
    column every row is a 1.0 (implicit feedback); without a time column every timestamp is 0.
    Ids that are not all integers are kept as text (numbered in sorted order by `prepare`)."""
    path = Path(path)
    names = column_names(user_col, item_col, rating_col, time_col)
    if path.suffix == ".parquet":
        try:
            frame = pl.read_parquet(path, columns=list(dict.fromkeys(names.values())))
        except FileNotFoundError:
            raise RecscaleError(f"{path}: file not found") from None
        except pl.exceptions.ColumnNotFoundError:
            require_columns(path, list(pl.read_parquet_schema(path)), list(names.values()))
            raise RecscaleError(f"{path}: missing column(s) {', '.join(names.values())}") from None
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise RecscaleError(f"{path}: unreadable Parquet: {str(exc).splitlines()[0]}") from None
        return frame_interactions(frame, str(path), names)
    fields = {"user": "id", "item": "id"}
    if rating_col:
        fields["rating"] = "float"
    if time_col:
        fields["timestamp"] = time_kind(time_format)
    frame = read_delimited(path, sep, fields, names=names)
    if not rating_col:
        frame = frame.with_columns(pl.lit(1.0).alias("rating"))
    if not time_col:
        frame = frame.with_columns(pl.lit(0).alias("timestamp"))
    return canonical_interactions(frame)

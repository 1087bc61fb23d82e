"""Readers for the published formats, each from the directory its publisher's archive unpacks to.

    movielens-100k  u.data (tab: user item rating timestamp), u.item ('|', Latin-1, 19 genre flags)
    movielens-dat   ratings.dat, movies.dat ('::', Latin-1): ml-1m, ml-10m
    movielens-csv   ratings.csv, movies.csv (genres '|'-separated): ml-20m, ml-25m, ml-latest
    netflix         combined_data_1..4.txt ('MovieID:' lines, then 'CustomerID,Rating,Date'),
                    movie_titles.csv (optional; 'MovieID,Year,Title', Latin-1)
    lastfm-360k     usersha1-artmbid-artname-plays.tsv (play counts are the implicit strength)

Ratings files take the fast path (one typed Polars read) and, when that fails, a line-by-line
diagnosis naming file and line. Item files are small and read line by line. Blank lines (also a
trailing one) are skipped; Windows line endings are accepted. Duplicate (user, item) pairs are
kept here and resolved by `prepare` (the latest one wins).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable

import polars as pl

from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import (
    INTERACTION_KINDS,
    canonical_interactions,
    first_bad_line,
    read_delimited,
    read_movies_csv,
    read_ratings_csv,
)
from recscale.errors import RecscaleError

ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
                 "Thriller", "War", "Western"]


def _require(root: Path, *names: str) -> list[Path]:
    paths = [root / n for n in names]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise RecscaleError(f"{root}: missing {', '.join(missing)} (expected the files of the published archive)")
    return paths


def _lines(path: Path, encoding: str):
    """(line number, text without the line ending) of the non-blank lines."""
    with open(path, encoding=encoding, newline="") as handle:
        for number, line in enumerate(handle, 1):
            text = line.rstrip("\r\n")
            if text.strip():
                yield number, text


def _items_frame(ids: list[int], titles: list[str], genres: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame({"item": ids, "title": titles, "genres": genres},
                        schema={"item": pl.Int64, "title": pl.Utf8, "genres": pl.List(pl.Utf8)})


def _int(path: Path, number: int, name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RecscaleError(f"{path}:{number}: {name} is not an integer: {text!r}") from None


def read_u_item(path: Path) -> pl.DataFrame:
    """ml-100k's u.item: id|title|release|video release|IMDb URL|19 genre flags, Latin-1."""
    ids, titles, genres = [], [], []
    for number, text in _lines(path, "latin-1"):
        fields = text.split("|")
        if len(fields) != 5 + len(ML100K_GENRES):
            raise RecscaleError(f"{path}:{number}: expected {5 + len(ML100K_GENRES)} '|'-separated fields, "
                                f"found {len(fields)}")
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            raise RecscaleError(f"{path}:{number}: genre flags must be 0 or 1")
        ids.append(_int(path, number, "movie id", fields[0]))
        titles.append(fields[1])
        genres.append([g for g, f in zip(ML100K_GENRES, flags) if f == "1" and g != "unknown"])
    return _items_frame(ids, titles, genres)


def read_movies_dat(path: Path) -> pl.DataFrame:
    """ml-1m/ml-10m's movies.dat: MovieID::Title::Genre|Genre, Latin-1."""
    ids, titles, genres = [], [], []
    for number, text in _lines(path, "latin-1"):
        fields = text.split("::")
        if len(fields) != 3:
            raise RecscaleError(f"{path}:{number}: expected MovieID::Title::Genres, found {len(fields)} fields")
        ids.append(_int(path, number, "MovieID", fields[0]))
        titles.append(fields[1])
        genres.append([g for g in fields[2].split("|") if g and g != "(no genres listed)"])
    return _items_frame(ids, titles, genres)


def read_movielens_100k(root: Path) -> RawDataset:
    data, item = _require(root, "u.data", "u.item")
    ratings = read_delimited(data, "\t", INTERACTION_KINDS)
    return RawDataset(root.name, ratings, read_u_item(item), (data, item))


def read_movielens_dat(root: Path) -> RawDataset:
    data, movies = _require(root, "ratings.dat", "movies.dat")
    ratings = read_delimited(data, "::", INTERACTION_KINDS)
    return RawDataset(root.name, ratings, read_movies_dat(movies), (data, movies))


def read_movielens_csv(root: Path) -> RawDataset:
    data, movies = _require(root, "ratings.csv", "movies.csv")
    return RawDataset(root.name, read_ratings_csv(data), read_movies_csv(movies), (data, movies))


def _netflix_bad_line(path: Path) -> str:
    movie_seen = False
    for number, text in _lines(path, "utf-8"):
        if text.endswith(":"):
            if not text[:-1].isdigit():
                return f"{path}:{number}: MovieID is not an integer: {text[:-1]!r}"
            movie_seen = True
            continue
        if not movie_seen:
            return f"{path}:{number}: a rating before the first 'MovieID:' line"
        fields = text.split(",")
        if len(fields) != 3:
            return f"{path}:{number}: expected CustomerID,Rating,Date, found {len(fields)} fields"
        if not fields[0].isdigit():
            return f"{path}:{number}: CustomerID is not an integer: {fields[0]!r}"
        if not fields[1].isdigit():
            return f"{path}:{number}: Rating is not an integer: {fields[1]!r}"
        try:
            datetime.date.fromisoformat(fields[2])
        except ValueError:
            return f"{path}:{number}: Date is not YYYY-MM-DD: {fields[2]!r}"
    return ""


def read_netflix_file(path: Path) -> pl.DataFrame:
    """One combined_data_N.txt: 'MovieID:' lines, each followed by its 'CustomerID,Rating,Date' lines."""
    try:
        # Only the first column is text ('MovieID:' or a CustomerID); the others are typed on read.
        raw = pl.read_csv(path, has_header=False, new_columns=["a", "b", "c"], separator=",",
                          schema_overrides={"a": pl.Utf8, "b": pl.Float32, "c": pl.Date}, quote_char=None)
        raw = raw.filter(pl.col("a").is_not_null())
        is_movie = pl.col("a").str.ends_with(":")
        frame = raw.select(
            pl.when(is_movie).then(pl.col("a").str.strip_suffix(":")).forward_fill().cast(pl.Int64).alias("item"),
            pl.when(~is_movie).then(pl.col("a")).cast(pl.Int64).alias("user"),
            pl.col("b").alias("rating"),
            pl.col("c").alias("date"),
            is_movie.alias("_movie"),
        ).filter(~pl.col("_movie"))
        broken = frame.select(pl.any_horizontal(pl.all().is_null()).any()).item()
    except (pl.exceptions.PolarsError, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise RecscaleError(f"{path}: file not found") from None
        raise RecscaleError(_netflix_bad_line(path) or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    if broken:
        raise RecscaleError(_netflix_bad_line(path) or f"{path}: missing values")
    return frame.select("user", "item", "rating",
                        (pl.col("date").cast(pl.Int64) * 86_400).alias("timestamp"))


def read_movie_titles(path: Path) -> pl.DataFrame:
    """movie_titles.csv: MovieID,YearOfRelease,Title (titles may hold commas; Latin-1)."""
    ids, titles = [], []
    for number, text in _lines(path, "latin-1"):
        fields = text.split(",", 2)
        if len(fields) != 3:
            raise RecscaleError(f"{path}:{number}: expected MovieID,YearOfRelease,Title")
        ids.append(_int(path, number, "MovieID", fields[0]))
        titles.append(fields[2])
    return _items_frame(ids, titles, [[] for _ in ids])


def read_netflix(root: Path) -> RawDataset:
    files = sorted(root.glob("combined_data_*.txt"))
    if not files:
        raise RecscaleError(f"{root}: no combined_data_*.txt files (the Netflix Prize training data)")
    ratings = canonical_interactions(pl.concat([read_netflix_file(f) for f in files]))
    titles = root / "movie_titles.csv"
    items = read_movie_titles(titles) if titles.is_file() else None
    return RawDataset(root.name, ratings, items, tuple(files) + ((titles,) if items is not None else ()))


LASTFM_FILE = "usersha1-artmbid-artname-plays.tsv"


def read_lastfm(root: Path) -> RawDataset:
    """usersha1, artist MBID (often empty), artist name, plays; no header. Users are their sha1,
    artists their MBID, or 'name:' + their name when they have none (text ids, numbered in sorted
    order by `prepare`; the original ids stay in users.parquet and items.parquet); the artist names
    become item titles. No timestamps: every row gets 0."""
    (path,) = _require(root, LASTFM_FILE)
    checks = {"usersha1": (0, "str"), "plays": (3, "int")}
    try:
        raw = pl.read_csv(path, separator="\t", has_header=False, quote_char=None,
                          new_columns=["usersha1", "mbid", "name", "plays"],
                          schema_overrides={"usersha1": pl.Utf8, "mbid": pl.Utf8, "name": pl.Utf8, "plays": pl.Int64})
    except (pl.exceptions.PolarsError, ValueError) as exc:
        problem = first_bad_line(path, "\t", checks, False)
        raise RecscaleError(problem or f"{path}: cannot parse: {str(exc).splitlines()[0]}") from None
    raw = raw.filter(~pl.all_horizontal(pl.all().is_null()))  # blank lines
    if raw["plays"].null_count() or raw["usersha1"].null_count():
        raise RecscaleError(first_bad_line(path, "\t", checks, False) or f"{path}: missing values")
    key = pl.when(pl.col("mbid").fill_null("") != "").then(pl.col("mbid")).otherwise("name:" + pl.col("name"))
    frame = raw.with_columns(pl.col("usersha1").alias("user"), key.alias("item"))
    items = frame.group_by("item").agg(pl.col("name").first().fill_null("").alias("title")).sort("item")
    items = items.with_columns(pl.lit([], dtype=pl.List(pl.Utf8)).alias("genres"))
    ratings = frame.select("user", "item", pl.col("plays").cast(pl.Float32).alias("rating"),
                           pl.lit(0, dtype=pl.Int64).alias("timestamp"))
    return RawDataset(root.name, ratings, items, (path,))


FORMATS: dict[str, Callable[[Path], RawDataset]] = {
    "movielens-100k": read_movielens_100k,
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
    "netflix": read_netflix,
    "lastfm-360k": read_lastfm,
}


def read_format(name: str, root: str | Path) -> RawDataset:
    if name not in FORMATS:
        raise RecscaleError(f"--format: unknown format {name!r} (known: {', '.join(FORMATS)})")
    root = Path(root)
    if not root.is_dir():
        raise RecscaleError(f"{root}: not a directory (expected the unpacked files of a {name} dataset)")
    return FORMATS[name](root)

"""One resolver of what `prepare` reads, shared by the command line and the Python API: exactly one
of a dataset known by name, a published format in a directory, or a file of interactions; read in
memory (`read`) or as a lazy scan for the streaming engine (`scan`), by the same rules."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl

from recscale.config.fields import option
from recscale.data.ingest.download import ensure_dataset
from recscale.data.ingest.formats import FORMATS, read_format
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import read_interactions, read_movies_csv
from recscale.data.ingest.scan import ScanSource, embedded_source, format_source, ratings_source
from recscale.data.ingest.sources import REMOTES, load_dataset
from recscale.errors import RecscaleError


def separator(sep: str | None, path: str | Path) -> str:
    """--sep as given ('\\t' and 'tab' mean a tab); by default a tab for .tsv files, else a comma."""
    if sep is None:
        return "\t" if str(path).endswith((".tsv", ".tab")) else ","
    sep = {"\\t": "\t", "tab": "\t"}.get(sep, sep)
    if len(sep) != 1 and sep != "::":
        raise RecscaleError(f"--sep: expected one character or '::', got {sep!r}")
    return sep


@dataclasses.dataclass(frozen=True)
class RawInput:
    """The input of `prepare`: its fields are `recscale prepare`'s flags (the API builds the same)."""

    dataset: str | None = option(None, "a dataset recscale knows by name (`recscale datasets list`); downloaded "
                                 "into the cache when missing, unless --raw-dir holds its files", metavar="NAME")
    format: str | None = option(None, "read the published files in --raw-dir (ncf-paper: NAME.train.rating, "
                                "NAME.test.rating, NAME.test.negative)", choices=(*FORMATS, "ncf-paper"))
    raw_dir: str | None = option(None, "directory with a dataset's unpacked files")
    ratings: str | None = option(None, "any CSV/TSV (with a header) or Parquet file of interactions")
    movies: str | None = option(None, "optional movies.csv (movieId,title,genres) for item features")
    sep: str | None = option(None, "--ratings field separator (default: tab for .tsv, else comma)")
    user_col: str = option("userId", "--ratings user column")
    item_col: str = option("movieId", "--ratings item column")
    rating_col: str | None = option("rating", "--ratings rating column; '' for implicit feedback (every row 1.0)")
    time_col: str | None = option("timestamp", "--ratings time column; '' for none")
    time_format: str | None = option(None, "--time-col's text: iso (ISO 8601 dates and times, an offset "
                                     "allowed) or a strftime pattern such as '%%Y-%%m-%%d %%H:%%M:%%S' (default: "
                                     "integers such as Unix seconds; Parquet dates and datetimes are read natively)")
    checksums: dict[str, str] = dataclasses.field(default_factory=dict)  # --sha256 of downloads

    @property
    def what(self) -> str:
        return self.dataset or self.format or self.ratings or "this input"

    @property
    def layout(self) -> str | None:
        """The published layout of the files: --format, or that of the dataset named."""
        return self.format or (REMOTES[self.dataset].format if self.dataset in REMOTES else None)

    def files_root(self) -> Path:
        """The directory with the input's files: --raw-dir, or the named dataset's (downloaded when missing)."""
        return Path(self.raw_dir or ensure_dataset(REMOTES[self.dataset], checksums=self.checksums))

    def check(self) -> None:
        if sum(map(bool, (self.dataset, self.ratings, self.format))) != 1:
            raise RecscaleError("prepare: give exactly one of --dataset NAME, --format FORMAT --raw-dir DIR, "
                                "or --ratings FILE")
        if self.format and not self.raw_dir:
            raise RecscaleError(f"--format {self.format}: needs --raw-dir DIR (the unpacked files)")

    def read_file(self, path: str | Path) -> pl.DataFrame:
        """The ratings file, or one file of a split made elsewhere, with the column and separator rules."""
        return read_interactions(path, separator(self.sep, path), self.user_col, self.item_col, self.rating_col,
                                 self.time_col, self.time_format)

    def items(self) -> pl.DataFrame | None:
        return read_movies_csv(self.movies) if self.movies else None

    def read(self) -> RawDataset:
        """The whole input in memory."""
        self.check()
        if self.dataset:
            return load_dataset(self.dataset, self.raw_dir, self.checksums)
        if self.format:
            return read_format(self.format, self.raw_dir)
        files = tuple(Path(p) for p in (self.ratings, self.movies) if p)
        return RawDataset(Path(self.ratings).stem, self.read_file(self.ratings), self.items(), files)

    def scan(self) -> ScanSource | None:
        """The input as a lazy scan for the streaming engine (None: its format is read in memory only)."""
        self.check()
        if self.ratings:
            return ratings_source(self.ratings, separator(self.sep, self.ratings), self.user_col, self.item_col,
                                  self.rating_col, self.time_col, self.items(), self.time_format)
        if self.dataset == "ml-latest-small":
            return embedded_source() if not self.raw_dir else format_source("movielens-csv", self.raw_dir)
        if self.format:
            return format_source(self.format, self.raw_dir)
        if self.dataset in REMOTES:
            remote = REMOTES[self.dataset]
            if self.raw_dir is None and not remote.urls:
                return None
            root = self.raw_dir or ensure_dataset(remote, checksums=self.checksums)
            return format_source(remote.format, root)
        return None

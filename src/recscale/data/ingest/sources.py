"""The datasets recscale knows by name: the embedded MovieLens ml-latest-small, which ships inside
the package (Parquet, with its README.txt and license) so that it works offline, and the public
datasets `recscale datasets download` fetches (ingest/download.py) and ingest/formats.py reads.

Checksums are the publishers' own: GroupLens publishes an MD5 beside each MovieLens archive. The
unversioned ml-latest changes over time and Last.fm publishes none: those are verified against the
SHA-256 recorded at their first download. The Netflix Prize data is no longer distributed by
Netflix; it is read from files put in place by hand (--raw-dir).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recscale.data.ingest.download import Remote, ensure_dataset
from recscale.data.ingest.formats import read_format
from recscale.data.ingest.raw import RawDataset
from recscale.data.ingest.readers import canonical_movies, canonical_ratings
from recscale.errors import RecscaleError

EMBEDDED_DIR = Path(__file__).parents[1] / "embedded"


def _load_embedded_ml_latest_small() -> RawDataset:
    root = EMBEDDED_DIR / "ml-latest-small"
    ratings, movies = root / "ratings.parquet", root / "movies.parquet"
    return RawDataset("ml-latest-small", canonical_ratings(pl.read_parquet(ratings)),
                      canonical_movies(pl.read_parquet(movies)), (ratings, movies))


def _movielens(name: str, md5: str | None, subdir: str, fmt: str) -> Remote:
    url = f"https://files.grouplens.org/datasets/movielens/{name}.zip"
    return Remote(name, fmt, (url,), {url: ("md5", md5)} if md5 else {}, subdir)


_NCF = "https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/master/Data/"


REMOTES: dict[str, Remote] = {r.name: r for r in [
    _movielens("ml-100k", "0e33842e24a9c977be4e0107933c0723", "ml-100k", "movielens-100k"),
    _movielens("ml-1m", "c4d9eecfca2ab87c1945afe126590906", "ml-1m", "movielens-dat"),
    _movielens("ml-10m", "ce571fd55effeba0271552578f2648bd", "ml-10M100K", "movielens-dat"),
    _movielens("ml-20m", "cd245b17a1ae2cc31bb14903e1204af3", "ml-20m", "movielens-csv"),
    _movielens("ml-25m", "6b51fb2759a8657d3bfcbfc42b592ada", "ml-25m", "movielens-csv"),
    _movielens("ml-latest", None, "ml-latest", "movielens-csv"),
    Remote("lastfm-360k", "lastfm-360k", ("https://mtg.upf.edu/static/datasets/last.fm/lastfm-dataset-360K.tar.gz",),
           {}, "lastfm-dataset-360K"),
    Remote("netflix", "netflix", (), {}, note="not distributed any more: put combined_data_*.txt in --raw-dir"),
    *[Remote(f"ncf-{n}", "ncf-paper", tuple(_NCF + f"{n}.{part}" for part in ("train.rating", "test.rating", "test.negative")),
             {}, note="the NCF paper's split, imported as a ready `ncf` dataset")
      for n in ("ml-1m", "pinterest-20")],
]}


DATASETS = ["ml-latest-small", *REMOTES]


def load_dataset(name: str, raw_dir: str | Path | None = None, checksums: dict[str, str] | None = None) -> RawDataset:
    """A named dataset's raw interactions: embedded, from `raw_dir`, or downloaded into the cache."""
    if name == "ml-latest-small" and raw_dir is None:
        return _load_embedded_ml_latest_small()
    if name == "ml-latest-small":
        return read_format("movielens-csv", raw_dir)
    if name not in REMOTES:
        raise RecscaleError(f"--dataset: unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    remote = REMOTES[name]
    if raw_dir is None and not remote.urls:
        raise RecscaleError(f"--dataset {name}: {remote.note}")
    return read_format(remote.format, raw_dir if raw_dir is not None else ensure_dataset(remote, checksums=checksums))

"""The datasets recscale knows by name. For now: the embedded MovieLens ml-latest-small, which ships
inside the package (Parquet, with its README.txt and license) so that it works offline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from recscale.data.readers import canonical_movies, canonical_ratings
from recscale.errors import RecscaleError

EMBEDDED_DIR = Path(__file__).parent / "embedded"


@dataclass(frozen=True)
class RawDataset:
    """Interactions and optional item features in canonical columns, plus the files they came from."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame | None
    files: tuple[Path, ...]


def _load_embedded_ml_latest_small() -> RawDataset:
    root = EMBEDDED_DIR / "ml-latest-small"
    ratings, movies = root / "ratings.parquet", root / "movies.parquet"
    return RawDataset("ml-latest-small", canonical_ratings(pl.read_parquet(ratings)),
                      canonical_movies(pl.read_parquet(movies)), (ratings, movies))


DATASETS = {
    "ml-latest-small": _load_embedded_ml_latest_small,
}


def load_dataset(name: str) -> RawDataset:
    if name not in DATASETS:
        raise RecscaleError(f"--dataset: unknown dataset {name!r} (known: {', '.join(DATASETS)})")
    return DATASETS[name]()

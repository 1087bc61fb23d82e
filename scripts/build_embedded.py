"""Rebuild the embedded ml-latest-small Parquet files from the published CSVs.

    python scripts/build_embedded.py ../shared/data/ml-latest-small

Keeps the published columns (userId, movieId, rating, timestamp; movieId, title, genres) and drops
the empty trailing columns of this copy of ratings.csv. README.txt (the license) ships beside them.
"""

import shutil
import sys
from pathlib import Path

import polars as pl

source = Path(sys.argv[1])
target = Path(__file__).resolve().parents[1] / "src/recscale/data/embedded/ml-latest-small"
target.mkdir(parents=True, exist_ok=True)
ratings = pl.read_csv(source / "ratings.csv", columns=["userId", "movieId", "rating", "timestamp"],
                      schema_overrides={"userId": pl.Int32, "movieId": pl.Int32,
                                        "rating": pl.Float32, "timestamp": pl.Int64})
movies = pl.read_csv(source / "movies.csv", schema_overrides={"movieId": pl.Int32})
ratings.write_parquet(target / "ratings.parquet", compression="zstd", compression_level=19, statistics=False)
movies.write_parquet(target / "movies.parquet", compression="zstd", compression_level=19, statistics=False)
shutil.copyfile(source / "README.txt", target / "README.txt")
print(f"wrote {target}: {ratings.height} ratings, {movies.height} movies")

"""`RawDataset`: what every reader returns and `prepare` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl


@dataclass(frozen=True)
class RawDataset:
    """Interactions and optional item features in canonical columns, plus the files they came from."""

    name: str
    interactions: pl.DataFrame
    items: pl.DataFrame | None
    files: tuple[Path, ...]

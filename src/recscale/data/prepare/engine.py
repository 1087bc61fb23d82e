"""Which engine prepares an input: in memory, or streamed when the in-memory path would pass the
memory budget (`--engine auto`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.scan import ScanSource
from recscale.data.prepare.stream import prepare_stream
from recscale.errors import RecscaleError
from recscale.fsutil import (
    stop_signals_clean_up,
)

# in-memory peak of `prepare` per byte of input, measured with benchmarks/out_of_core.py (text is
# compact per row; Parquet is compressed, about 2.5x smaller for the same rows)
MEMORY_PER_INPUT_BYTE = {"text": 6, "parquet": 15}


def in_memory_estimate(source: ScanSource) -> int:
    """Bytes the in-memory `prepare` would take for this input (peak RSS, measured)."""
    return sum(p.stat().st_size * MEMORY_PER_INPUT_BYTE["parquet" if p.suffix == ".parquet" else "text"]
               for p in source.files[:1])


def choose_engine(engine: str, source: ScanSource | None, budget: int, what: str) -> str:
    """'memory' or 'stream' for `--engine` (auto: stream when the in-memory path would pass the budget)."""
    if engine == "stream" and source is None:
        raise RecscaleError(f"--engine stream: {what} is read in memory only (the streaming engine reads CSV/TSV "
                            f"and Parquet files and the MovieLens formats); convert it to CSV or Parquet first")
    if engine == "auto":
        return "stream" if source is not None and in_memory_estimate(source) > budget else "memory"
    return engine


def prepare_input(read_raw: Callable, scan: Callable[[], ScanSource | None], cfg: PrepareConfig, out: str | Path,
                  overwrite: bool = False, what: str = "this input") -> tuple[dict, str]:
    """`prepare` with the engine `cfg.engine` asks for: (meta.json's content, the engine used).
    `read_raw()` reads the input in memory, `scan()` gives its scannable source (or None)."""
    from recscale.data.prepare.memory import prepare
    from recscale.resources import memory_budget
    with stop_signals_clean_up("prepare"):
        if cfg.engine != "memory":
            source = scan()
            engine = choose_engine(cfg.engine, source, memory_budget(cfg.memory_budget), what)
            if engine == "stream":
                return prepare_stream(source, cfg, out, overwrite), engine
        return prepare(read_raw(), cfg, out, overwrite), "memory"

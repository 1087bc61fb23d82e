"""The prepare stage's entry (`prepare_from`) and which engine prepares an input: in memory, or
streamed when the in-memory path would pass the memory budget (`--engine auto`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from recscale.config.prepare import PrepareConfig
from recscale.data.ingest.inputs import RawInput
from recscale.data.ingest.scan import ScanSource
from recscale.data.prepare.presplit import SplitFiles, import_files, import_ncf_paper
from recscale.data.prepare.stream import prepare_stream
from recscale.errors import RecscaleError
from recscale.fsutil import stop_signals_clean_up

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


def prepare_from(source: RawInput, cfg: PrepareConfig, out: str | Path, overwrite: bool = False,
                 files: SplitFiles = SplitFiles()) -> tuple[dict, str]:
    """The prepare stage's entry, for the command line and the API alike: a split made elsewhere
    (`files`), the NCF paper's published split, or `source` through the engine `cfg.engine` asks
    for. Returns (meta.json's content, the engine used)."""
    if files.train_file or source.layout == "ncf-paper":
        with stop_signals_clean_up("prepare"):
            if files.train_file:
                return import_files(source, files, cfg, Path(out), overwrite), "memory"
            return import_ncf_paper(source, cfg, Path(out), overwrite), "memory"
    return prepare_input(source.read, source.scan, cfg, out, overwrite, what=source.what)

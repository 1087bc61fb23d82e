"""`recscale prepare`: raw interactions -> a prepared dataset. The input flags are RawInput's
fields, the split-import flags SplitFiles', the settings PrepareConfig's: all generated."""

from __future__ import annotations

import time

from recscale.config.arguments import add_arguments, from_namespace
from recscale.config.layers import build, flags
from recscale.config.prepare import PrepareConfig
from recscale.data.dataset.schema import dataset_notes
from recscale.data.ingest.download import parse_checksums
from recscale.data.ingest.inputs import RawInput
from recscale.data.prepare.engine import prepare_from
from recscale.data.prepare.presplit import SplitFiles
from recscale.progress import LOGGER


def add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="raw interactions -> prepared dataset (Parquet + meta.json)")
    add_arguments(p, RawInput, skip=("checksums",))
    p.add_argument("--sha256", action="append", metavar="FILE=HEX", help="--dataset: your own SHA-256 of a "
                   "downloaded archive (FILE: its file name), checked before it is used")
    add_arguments(p, SplitFiles)
    p.add_argument("--out", required=True, help="prepared dataset directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_arguments(p, PrepareConfig)


def cmd_prepare(args) -> int:
    cfg = build(PrepareConfig, flags(from_namespace(PrepareConfig, args)))
    source = RawInput(**from_namespace(RawInput, args), checksums=parse_checksums(args.sha256))
    files = SplitFiles(**from_namespace(SplitFiles, args))
    started = time.perf_counter()
    meta, engine = prepare_from(source, cfg, args.out, args.overwrite, files)
    if engine == "stream":
        LOGGER.info("engine: stream (bounded memory)")
    counts = ", ".join(f"{k}={v}" for k, v in meta["counts"].items())
    print(f"prepared {meta['source']['dataset']} ({cfg.protocol}) in {time.perf_counter() - started:.1f}s "
          f"-> {args.out}\n  {counts}")
    for note in dataset_notes(meta):
        LOGGER.info(f"note: {note}")
    return 0

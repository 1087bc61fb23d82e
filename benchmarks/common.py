"""The harness every benchmark script stands on: its command line (`arguments`), its data
(`synthetic`, `prepared`, `workdir`), its runs (`run_config`, `trainer_for`), its timing
(`median_time`, `peak_rss_mib`) and its report (`machine`, `table`, `publish` into the script's own
section of BENCHMARKS.md, between `<!-- NAME:begin -->` and `<!-- NAME:end -->`).

recscale is imported inside the functions that need it, so that a script's child process in
another tool's virtual environment (RecBole's) can still import the machine and table helpers."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{os.cpu_count()} CPU cores ({cpu}; {instruction_sets()}){gpu}, Python {platform.python_version()}, "
            f"torch {torch.__version__}, {datetime.date.today().isoformat()}")


def instruction_sets() -> str:
    """The vector instruction sets that decide CPU speed here (bf16 is native only with
    AVX512-BF16 or AMX; with AVX2 alone it is emulated and slow)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "instruction sets unknown"
    named = [("avx2", "AVX2"), ("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")]
    return ", ".join(label for flag, label in named if flag in flags) or "no AVX2"


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def peak_rss_mib() -> float:
    """This process's peak resident memory. VmHWM, unlike ru_maxrss, does not inherit the parent's
    peak across fork + exec, so child processes measure only themselves."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_section(name: str, body: str, path: Path = ROOT / "BENCHMARKS.md") -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text:
        text = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)
    print(f"updated the {name!r} section of {path}")


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def arguments(doc: str | None, repeats: int | None = None) -> argparse.ArgumentParser:
    """The parser each script starts from: its module docstring as --help, --no-write, and
    --repeats where the script reports medians."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-write", action="store_true", help="print the section; leave BENCHMARKS.md as it is")
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats, help="runs per measurement; the median is reported")
    return parser


def publish(args: argparse.Namespace, name: str, body: str) -> None:
    """Print the section and, unless --no-write, put it into BENCHMARKS.md."""
    print(body)
    if not args.no_write:
        write_section(name, body)


def workdir(name: str) -> Path:
    """A fresh folder for one run's data and logs (kept, so that a figure can be inspected)."""
    return Path(tempfile.mkdtemp(prefix=f"recscale-{name}-"))


def synthetic(users: int, items: int, interactions: int, seed: int = 0):
    """A power-law synthetic log of the given shape (recscale's `synth` source), as a RawDataset."""
    from recscale.data.ingest.synth import SynthSpec, synthesize
    return synthesize(SynthSpec(users, items, interactions, seed=seed)).raw


def prepared(raw, out: Path, **options) -> Path:
    """`raw` prepared in memory into `out` with PrepareConfig(**options); an existing output is reused."""
    from recscale.config.prepare import PrepareConfig
    from recscale.data.prepare.memory import prepare
    if not (out / "meta.json").exists():
        prepare(raw, PrepareConfig(**options), out)
    return out


def run_config(data_dir: Path, model: str, **settings):
    """The RunConfig `recscale train` would resolve for these settings (CPU and no progress bars
    unless said otherwise)."""
    from recscale.training.build import resolve_run_config
    return resolve_run_config({"data": str(data_dir), "model": model, "device": "cpu", "progress": False, **settings},
                              source="benchmark")


def trainer_for(cfg, model_settings: dict | None = None):
    """The Trainer `recscale train` builds for `cfg` (seeded model, loader, optimizers)."""
    from recscale.data.dataset.prepared import PreparedDataset
    from recscale.training.build import seeded_trainer
    trainer = seeded_trainer(cfg, model_settings or {}, PreparedDataset(Path(cfg.data)), torch.device(cfg.system.device))
    trainer.model.train()
    return trainer

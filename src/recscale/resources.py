"""What this process may use: memory (for the in-memory / streaming choices) and CPUs (for thread
counts), from the cgroup limits a container sets as well as from the machine."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from recscale.errors import RecscaleError

UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20, "g": 1e9, "gb": 1e9,
         "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(text: str, where: str = "--memory-budget") -> int:
    """'4GiB', '500MB', '2g', '123456' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise RecscaleError(f"{where}: expected a size such as 4GiB, 500MB or auto, got {text!r}")
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise RecscaleError(f"{where}: expected a positive size, got {text!r}")
    return int(value)


def _cgroup_memory_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def available_memory() -> int:
    """Bytes this process can still use: MemAvailable, capped by a cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit = _cgroup_memory_limit()
    return min(available, limit) if limit else available


def memory_budget(text: str, where: str = "--memory-budget") -> int:
    """'auto': half of what is available now (the rest for the OS, the page cache and other jobs)."""
    return available_memory() // 2 if str(text).strip().lower() == "auto" else parse_size(text, where)


def limit_threads(share: int = 1) -> None:
    """PyTorch's intra-op threads to this process's share of the CPUs it may use (its default counts
    the machine's cores, ignoring affinity and cgroup quotas: oversubscribed threads spin-wait).
    An explicit OMP_NUM_THREADS (torchrun sets one) is left alone."""
    if "OMP_NUM_THREADS" in os.environ:
        return
    import torch
    torch.set_num_threads(max(1, min(torch.get_num_threads(), usable_cpus() // share)))


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16() -> bool:
    """Whether the CPU computes bf16 natively (AVX512-BF16 or AMX); without, PyTorch emulates it and
    bf16 is slower than fp32 (14.6x for NeuMF on an AVX2-only CPU, issue 18)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by a cgroup CPU quota."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, count)

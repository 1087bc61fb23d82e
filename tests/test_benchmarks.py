"""benchmarks/gpu.py must run anywhere: here on CPU at small sizes, every model and precision."""

from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import ROOT


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_benchmark_runs_on_cpu_at_small_sizes(capsys):
    results = _load("gpu").main(["--small", "--no-write", "--device", "cpu"])
    assert [(r["model"], r["precision"]) for r in results] == [
        (m, p) for m in ("neumf", "multvae") for p in ("fp32", "bf16", "fp16")]
    assert all(r["device"] == "cpu" and r[f"{r['unit']}_per_second"] > 0 for r in results)
    assert "| neumf | fp16 |" in capsys.readouterr().out

"""scripts/gpu-check.sh, the GPU device check, dry-run on the CPU: the cuda tests and
benchmarks/gpu.py at small sizes, every model and precision, so that the first GPU minutes go to
running, not to fixing the script."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT


@pytest.mark.slow
def test_the_device_check_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu-check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    log = (tmp_path / "pytest-cuda.log").read_text()
    assert " passed" in log and "failed" not in log and "skipped" not in log  # run, not skipped, on the CPU
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert [(r["model"], r["precision"]) for r in results] == [
        (m, p) for m in ("neumf", "multvae") for p in ("fp32", "bf16", "fp16")]
    assert all(r["device"] == "cpu" and r[f"{r['unit']}_per_second"] > 0 for r in results)
    table = done.stdout.splitlines()
    assert table[-1].startswith("multvae  fp16") and any(line.startswith("== device check") for line in table)

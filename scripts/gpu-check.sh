#!/usr/bin/env bash
# The GPU device check in one command (issue 32): install the carried wheels (.whl/, from
# `make gpu-wheels`), run `pytest -m cuda`, then benchmarks/gpu.py; logs and JSON go under $OUT,
# a short table is printed last. Sized to stay under 8 minutes on one H200.
#
#   scripts/gpu-check.sh             # on the GPU machine (the device tool sets OUT)
#   scripts/gpu-check.sh --dry-run   # anywhere: the same steps on the CPU at small sizes
#                                    # (tests/test_gpu_check.py runs this in `make test`)
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
bench=()
if [ "${1:-}" = "--dry-run" ]; then
  export RECSCALE_CUDA_TEST_DEVICE=cpu  # the cuda tests, run on the CPU
  bench=(--small --device cpu)
fi
if compgen -G ".whl/*.whl" >/dev/null; then  # what the GPU machine lacks (polars, tomli-w)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/recscale-site \
    .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/recscale-site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else '')" 2>&1 | tee "$OUT/device.txt"

started=$SECONDS
timeout 300 "$PY" -m pytest -m cuda -q -p no:cacheprovider -o addopts="" tests/test_cuda.py \
  --junitxml "$OUT/cuda-junit.xml" 2>&1 | tee "$OUT/pytest-cuda.log"
tests=${PIPESTATUS[0]}
timeout 300 "$PY" benchmarks/gpu.py "${bench[@]}" --no-write --json "$OUT/gpu.json" 2>&1 | tee "$OUT/gpu.log"
benchmark=${PIPESTATUS[0]}

echo
echo "== device check ($((SECONDS - started)) s): pytest -m cuda exit $tests, benchmarks/gpu.py exit $benchmark"
grep -E "passed|failed|skipped|error" "$OUT/pytest-cuda.log" | tail -1
if [ -f "$OUT/gpu.json" ]; then
  "$PY" - "$OUT/gpu.json" <<'PYEOF'
import json, sys
for r in json.load(open(sys.argv[1])):
    rate = r[r["unit"] + "_per_second"]
    print(f"{r['model']:8s} {r['precision']:5s} batch {r['batch_size']:>9,}  {rate:>14,.0f} {r['unit']}/s  "
          f"{r['epoch_seconds']:7.2f} s/epoch  {r['peak_memory_mib']:>8,.0f} MiB  {r['device']}")
PYEOF
fi
[ "$tests" -eq 0 ] && [ "$benchmark" -eq 0 ]

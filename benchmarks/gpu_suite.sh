#!/usr/bin/env bash
# The GPU suite, run on the device machine from the repository root (see benchmarks/gpu_suite.py).
# Two calls, because bitsandbytes does not fit in the same 64 MiB carry as the rest (tools/gpu_wheels.sh):
#   call 1, carry [".whl/core"]:  bash benchmarks/gpu_suite.sh throughput zero3   (budget: <= 7 min on one H200)
#   call 2, carry [".whl/quant"]: bash benchmarks/gpu_suite.sh quant              (budget: <= 2 min)
# Results: benchmarks/results/h200-<date>.json (copied to $OUT when set, so it comes back).
# Without CUDA it prints "skipped: no CUDA" and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("${@:-throughput}")
if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  exec python3 benchmarks/gpu_suite.py --part "${parts[@]}"  # prints "skipped: no CUDA", exits 0
fi
for set in .whl/core .whl/quant; do
  if ls "$set"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$set"/*.whl
  fi
done
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
status=0
python3 benchmarks/gpu_suite.py --part "${parts[@]}" || status=$?
if [ -n "${OUT:-}" ] && ls benchmarks/results/h200-*.json >/dev/null 2>&1; then
  cp benchmarks/results/h200-*.json "$OUT"/
fi
exit $status

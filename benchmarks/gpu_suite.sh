#!/usr/bin/env bash
# The GPU suite, run on the device machine from the repository root (see benchmarks/gpu_suite.py).
# One call, carry [".whl/gpu"] (tools/gpu_wheels.sh makes it, 53 MiB):
#   bash benchmarks/gpu_suite.sh throughput zero3 quant     (budget: <= 8 min on one H200)
#   bash benchmarks/gpu_suite.sh grpo                       (GRPO, bf16 LoRA on Phi-3-mini, vLLM colocate when a
#                                                            vllm in TRL's range imports; not yet run. Azure ML runs
#                                                            grpo in environments/rft-gpu (vllm 0.30.0); the device
#                                                            image has no vllm (and torch 2.11; vllm 0.30.0 pins
#                                                            torch 2.13, and its 315 MB wheel exceeds the carry), so
#                                                            there it generates with transformers; the result's
#                                                            why_not_vllm says why)
# Rehearsed on the CPU in CI: python benchmarks/gpu_suite.py --rehearse (tests/finetune/test_gpu_suite_offline.py).
# Results: benchmarks/results/h200-<date>.json, also written to $OUT after each part with gpu_suite.log, so they
# come back even from a command killed at its limit; copy h200-<date>.json from the run's files_at into
# benchmarks/results/ here and commit it. gpu_suite.py stops starting work at --deadline_s (540 s).
# Without CUDA it prints "skipped: no CUDA" and exits 0. GPU_SUITE_REHEARSE=1 runs it all on the CPU instead
# (carried wheels included: build them with PYVER=<this Python> tools/gpu_wheels.sh), to try the carry here.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=("${@:-throughput}")  # throughput zero3 quant grpo
rehearse=()
if [ "${GPU_SUITE_REHEARSE:-0}" = 1 ]; then
  rehearse=(--rehearse)
elif ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  exec python3 benchmarks/gpu_suite.py --part "${parts[@]}"  # prints "skipped: no CUDA", exits 0
fi
wheels=${GPU_SUITE_WHEELS:-.whl/gpu}
if ls "$wheels"/*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl
else
  echo "no $wheels: run tools/gpu_wheels.sh here and carry .whl/gpu" >&2
  exit 2
fi
export PYTHONPATH=/tmp/site:$PWD/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# The report goes to $OUT as well after each part (gpu_suite.py), and so does the whole log.
log=${OUT:-/tmp}/gpu_suite.log
python3 benchmarks/gpu_suite.py --part "${parts[@]}" "${rehearse[@]}" 2>&1 | tee "$log"

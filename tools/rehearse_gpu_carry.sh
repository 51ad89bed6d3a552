#!/usr/bin/env bash
# Rehearse the device run on this machine: a venv holding what the device image holds (the packages the
# suite touches, at the versions .library/device/KINDS.md lists; torch is this machine's 2.13.0 CPU build,
# the image's is 2.11.0+cu130), the carried wheel set built for this Python, and benchmarks/gpu_suite.sh
# run through, pip install included, with GPU_SUITE_REHEARSE=1. It shows a wheel missing from the carry
# (an ImportError) or an import broken by the image's versions before device time is spent. The venv
# (/tmp/gpu_carry_venv, kept for the next time) is 1.6 GB, mostly torch; the CUDA paths are not rehearsed.
#
#   bash tools/rehearse_gpu_carry.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/gpu_carry_venv}
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.13.0  # first: anything else could pull a CUDA build
  "$VENV/bin/pip" install -q transformers==5.17.0 accelerate==1.15.0 peft==0.21.2 tokenizers==0.23.2 \
    safetensors==0.8.0 huggingface_hub==1.33.0 numpy pandas pyarrow pyyaml jinja2 filelock requests psutil \
    matplotlib einops msgpack py-cpuinfo nvidia-ml-py tabulate tqdm regex xxhash fsspec aiohttp httpx pytest \
    sympy protobuf rich click cloudpickle sentencepiece
fi
DEST=/tmp/gpu_carry_wheels PYVER=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') \
  bash tools/gpu_wheels.sh
PATH="$VENV/bin:$PATH" GPU_SUITE_REHEARSE=1 GPU_SUITE_WHEELS=/tmp/gpu_carry_wheels \
  bash benchmarks/gpu_suite.sh throughput zero3 quant

#!/usr/bin/env bash
# Download exactly the wheels benchmarks/gpu_suite.sh needs on the device machine (Python 3.12, x86-64,
# torch 2.11 + CUDA 13.0, no network there) into .whl/gpu (git-ignored): one set that fits one 64 MiB
# carry together with the repository, so the whole suite is one device call.
#   transformers/peft/trl at the train-gpu pins, datasets, liger-kernel, mlflow-skinny and what its SQLite
#   tracking store needs beyond the image (sqlalchemy, alembic, cryptography, ...), deepspeed (built here as
#   a pure-Python wheel: PyPI has only its source), and bitsandbytes slimmed to its CUDA 13 and CPU
#   libraries (its wheel holds one library per CUDA/ROCm/XPU version: 43 MB; slimmed about 3 MB).
# Versions are the train-gpu environment's pins; packages the device image already holds (torch,
# accelerate, triton, numpy, pyarrow, pandas, einops, ...: .library/device/KINDS.md) are not fetched.
#
#   bash tools/gpu_wheels.sh            # then: du -sh .whl/gpu
#   PYVER=3.11 bash tools/gpu_wheels.sh # the same set for this machine's Python (to rehearse the carry here)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}  # the project venv (make install)
PYVER=${PYVER:-3.12}  # the device image's Python
DEST=${DEST:-.whl/gpu}  # where the set goes
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64)
pin() {  # the train-gpu pin of $1
  grep -i "^$1==" environments/train-gpu/context/requirements.txt | head -1
}
download() {  # download DEST REQUIREMENT...
  local dest=$1; shift
  mkdir -p "$dest"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@"
}

rm -rf .whl/core .whl/quant .whl/bnb "$DEST"  # core and quant: the two-carry layout this replaces
download "$DEST" "$(pin transformers)" "$(pin peft)" "$(pin trl)" "$(pin datasets)" "$(pin liger-kernel)" \
  "$(pin tokenizers)" dill==0.4.0 multiprocess==0.70.18 \
  "mlflow-skinny==$(pin mlflow | cut -d= -f3)" "mlflow-tracing==$(pin mlflow | cut -d= -f3)" \
  cachetools==6.2.1 databricks-sdk==0.73.0 gitpython==3.1.45 gitdb==4.0.12 smmap==5.0.2 \
  opentelemetry-api==1.38.0 opentelemetry-sdk==1.38.0 opentelemetry-semantic-conventions==0.59b0 \
  opentelemetry-proto==1.38.0 sqlparse==0.5.3 pydantic==2.12.4 pydantic-core==2.41.5 annotated-types==0.7.0 \
  typing-inspection==0.4.2 google-auth==2.43.0 pyasn1-modules==0.4.2 pyasn1==0.6.1 rsa==4.9.1 \
  importlib-metadata==8.7.0 fastapi==0.121.1 starlette==0.49.3 uvicorn==0.38.0 python-dotenv==1.2.1 \
  py-spy==0.4.1 hjson==3.1.0 ninja==1.13.0 "$(pin orjson)" \
  sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 greenlet==3.2.4 \
  cryptography==50.0.2 cffi==2.1.1 pycparser==3.12  # the SQLite tracking store imports cryptography
# DeepSpeed publishes only a source archive; build it here without its C++ ops (they JIT-compile on use).
DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$(pin deepspeed)"

# bitsandbytes, keeping the libraries the image's torch (CUDA 13.0) and the CPU fallback load. The wheel
# tool (run from its own wheel, nothing installed) unpacks and repacks it, rewriting RECORD.
work=$(mktemp -d) && trap 'rm -rf "$work"' EXIT
download "$work" "$(pin bitsandbytes)"
"$PY" -m pip download -q --no-deps -d "$work/tool" wheel==0.48.0
wheel_tool() { PYTHONPATH=$(ls "$work"/tool/wheel-*.whl) "$PY" -m wheel "$@"; }
wheel_tool unpack -d "$work/unpacked" "$work"/bitsandbytes-*.whl >/dev/null
find "$work"/unpacked/*/bitsandbytes -maxdepth 1 -name 'libbitsandbytes_*.so' \
  ! -name 'libbitsandbytes_cuda13*.so' ! -name 'libbitsandbytes_cpu.so' -delete
wheel_tool pack -d "$DEST" "$work"/unpacked/* >/dev/null
du -sh "$DEST"

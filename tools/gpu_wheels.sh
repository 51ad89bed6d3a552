#!/usr/bin/env bash
# Download exactly the wheels benchmarks/gpu_suite.sh needs on the device machine (Python 3.12, x86-64,
# no network there) into .whl/ (git-ignored), in two sets that each fit one 64 MiB carry (with the repo):
#   .whl/core   (~41 MB, call 1) transformers/peft/trl at the train-gpu pins, datasets, liger-kernel,
#               mlflow-skinny and its missing needs, deepspeed (built here as a pure-Python wheel: PyPI has
#               only its source)
#   .whl/quant  (~61 MB, call 2) bitsandbytes (42 MB alone) plus what the QLoRA/QDoRA tests need from core;
#               the image's own transformers and tokenizers are used there, to fit
# Versions are the train-gpu environment's pins; packages the device image already holds (torch,
# transformers, peft, accelerate, triton, numpy, pyarrow, pandas, ...) are not fetched.
#
#   bash tools/gpu_wheels.sh            # then: du -sh .whl/*
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}  # the project venv (make install)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64)
pin() {  # the train-gpu pin of $1
  grep -i "^$1==" environments/train-gpu/context/requirements.txt | head -1
}
download() {  # download DEST REQUIREMENT...
  local dest=$1; shift
  mkdir -p "$dest"
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$dest" "$@"
}

# transformers and peft at the train-gpu pins (the image's own transformers is older than the one tested here)
download .whl/core "$(pin transformers)" "$(pin peft)" "$(pin trl)" "$(pin datasets)" "$(pin liger-kernel)" \
  "$(pin tokenizers)" dill==0.4.0 multiprocess==0.70.18 \
  "mlflow-skinny==$(pin mlflow | cut -d= -f3)" "mlflow-tracing==$(pin mlflow | cut -d= -f3)" \
  cachetools==6.2.1 databricks-sdk==0.73.0 gitpython==3.1.45 gitdb==4.0.12 smmap==5.0.2 \
  opentelemetry-api==1.38.0 opentelemetry-sdk==1.38.0 opentelemetry-semantic-conventions==0.59b0 \
  opentelemetry-proto==1.38.0 sqlparse==0.5.3 pydantic==2.12.4 pydantic-core==2.41.5 annotated-types==0.7.0 \
  typing-inspection==0.4.2 google-auth==2.43.0 pyasn1-modules==0.4.2 pyasn1==0.6.1 rsa==4.9.1 \
  importlib-metadata==8.7.0 fastapi==0.121.1 starlette==0.49.3 uvicorn==0.38.0 python-dotenv==1.2.1 \
  py-spy==0.4.1 hjson==3.1.0 ninja==1.13.0 "$(pin orjson)" \
  sqlalchemy==2.1.9 alembic==1.20.1 mako==1.4.3 greenlet==3.2.4  # the SQLite tracking store of the GPU tests
# DeepSpeed publishes only a source archive; build it here without its C++ ops (they JIT-compile on use).
if ! ls .whl/core/deepspeed-*.whl >/dev/null 2>&1; then
  DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation -w .whl/core "$(pin deepspeed)"
fi
rm -rf .whl/quant && mkdir -p .whl/quant
download .whl/quant "$(pin bitsandbytes)"
for wheel in .whl/core/*.whl; do
  case "$(basename "$wheel")" in
    transformers-*|tokenizers-*|deepspeed-*|liger_kernel-*|py_spy-*|ninja-*|hjson-*) ;;
    *) cp "$wheel" .whl/quant/ ;;
  esac
done
rm -rf .whl/bnb
du -sh .whl/core .whl/quant

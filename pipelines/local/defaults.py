"""The local defaults: the tiny Phi-3 base model, `LOCAL_PROFILE`, and models of the local MLflow registry."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from maap_finetune.common.errors import UserError
from pipelines.local.tracking import absolute_tracking_uri

# Input overrides for the local run, applied only where the user did not --set the same key, and
# printed at the start of the run. Why each one:
# - learning_rate: the tiny model starts from random weights; 2e-4 (the YAML default, right for a
#   pre-trained model) would barely move it in a few dozen steps, so its loss would not visibly drop.
# - epochs: a few passes over the ~100 sample rows so training shows a trend in seconds.
# - max_seq_length: sample conversations are short; 256 tokens keeps every row whole and the CPU busy
#   for less time than the YAML's 2048.
# - max_new_tokens / evaluate.sample_generations: generating 64 tokens per row from a random
#   tiny model costs time and shows nothing; a few short samples prove the path works.
LOCAL_PROFILE: dict[str, Any] = {
    "learning_rate": 0.005,
    "epochs": 3,
    "max_seq_length": 256,
    "max_new_tokens": 16,
    "evaluate.sample_generations": 4,
}

# On top of LOCAL_PROFILE for one training_method (the tiny model only, --set wins). grpo, measured on the sample
# (data/sample/rft.jsonl): TRL refuses LoRA on lm_head for GRPO, and LoRA elsewhere barely moves the random
# 64-wide model's token log-probabilities (reward flat over 30 steps), so the tiny model is fully fine-tuned;
# 8 completions of 4 tokens per prompt, 2 prompts a step, 30 steps take the reward from about 0.2 to 0.8.
LOCAL_METHOD_PROFILE: dict[str, dict[str, Any]] = {
    "grpo": {
        "peft_method": "none",
        "learning_rate": 0.01,
        "per_device_train_batch_size": 16,
        "finetune.num_generations": 8,
        "finetune.max_completion_length": 4,
        "finetune.max_steps": 30,
        "finetune.logging_steps": 2,
    },
}
# Environment for every step when the base model is the tiny model (a variable set in the user's shell
# wins). OMP_NUM_THREADS=1: the tiny model's matrices (hidden size 64) are too small for threads to pay
# off, and on a busy 2-core machine OpenMP threads spin against other processes: fine-tuning measured
# 2.4 s with one thread against 17.6-36 s with two, under the same load.
TINY_MODEL_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1"}
TINY_MODEL_DIR = Path(".maap") / "tiny-phi3"


def _tiny_fingerprint(seed: int) -> str:
    from maap_finetune.models import tiny

    digest = hashlib.sha256(Path(tiny.__file__).read_bytes())
    digest.update(tiny.SAMPLE_DATA.read_bytes())
    digest.update(str(seed).encode())
    return digest.hexdigest()


def ensure_tiny_model(cache_dir: Path | str = TINY_MODEL_DIR, seed: int = 0, out: TextIO = sys.stdout) -> Path:
    """Build the tiny Phi-3 model into `cache_dir` once; rebuild when its builder or corpus changed."""
    from maap_finetune.models.tiny import build_tiny_phi3

    cache_dir = Path(cache_dir).resolve()
    stamp = cache_dir / "maap_build.json"
    fingerprint = _tiny_fingerprint(seed)
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return cache_dir
    print(f"building the tiny Phi-3 model into {cache_dir} (once)", file=out, flush=True)
    staging = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_phi3(staging, seed=seed)
    (staging / "maap_build.json").write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}) + "\n")
    shutil.rmtree(cache_dir, ignore_errors=True)
    staging.rename(cache_dir)
    return cache_dir


REGISTERED_MODELS_DIR = Path(".maap") / "registered"


def registered_model_folder(uri: str, tracking_uri: str, cache_dir: Path | str = REGISTERED_MODELS_DIR) -> Path:
    """The folder of a model in the local MLflow registry (`models:/<name>/<version>`), downloaded once:
    what the local run passes as model_path to chain runs (DPO on a registered SFT model).

    The cache is keyed by the store as well as the name and version: two stores each hold their own
    `models:/maap-finetuned/1`. The store is the registry too, as it is for the pipeline's Register step."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    store = absolute_tracking_uri(tracking_uri, Path.cwd())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", uri[len("models:/"):]).strip("-")
    folder = Path(cache_dir).resolve() / f"{name}-{hashlib.sha256(store.encode()).hexdigest()[:12]}"
    if (folder / "MLmodel").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Resolved with a client of this store: a models:/ download asks the process-wide registry instead.
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        found = get_model_name_and_version(client, uri)  # (name, version), or (model id,) for models:/m-...
        source = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
                  else client.get_model_version_download_uri(*found))
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=store)
    except MlflowException as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"model_path {uri}: not in the MLflow registry at {store} ({err.message})") from None
    if not (Path(local) / "MLmodel").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"model_path {uri}: the registered version is not an MLflow model folder (no MLmodel)")
    shutil.rmtree(folder, ignore_errors=True)
    Path(local).rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def apply_local_profile(
    inputs: Mapping[str, Any], step_inputs: Mapping[str, Mapping[str, Any]], profile: Mapping[str, Any] = LOCAL_PROFILE
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Fill in `profile` values the user did not set; return (inputs, step_inputs, what was applied)."""
    merged = dict(inputs)
    merged_steps = {step: dict(values) for step, values in step_inputs.items()}
    applied: dict[str, Any] = {}
    for key, value in profile.items():
        if "." in key:
            step, _, name = key.partition(".")
            if name not in merged_steps.get(step, {}):
                merged_steps.setdefault(step, {})[name] = value
                applied[key] = value
        elif key not in merged:
            merged[key] = value
            applied[key] = value
    return merged, merged_steps, applied

"""Tags and description of a registered model version: lineage, metrics, gate and pipeline run.

The same tags go to the local MLflow registry and to Azure ML (whose tag values are strings).
Lineage comes from the MLmodel `metadata` Fine-Tune writes (base_model, peft_method) and from
Evaluate's metrics.json (task, dataset hash; base model as Evaluate saw it). `model_size_bytes` is
the registered folder's size (the weights, for a merged model): pipelines/deploy.py checks the VM
size against it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PIPELINE_RUN_TAG = "pipeline_run_id"
MODEL_SIZE_TAG = "model_size_bytes"
# "false" from creation until the load-back check passes, then "true"; readers refuse "false" (a version
# without the tag predates it). CONTENT_TAG keys idempotency: the same weights on the same data.
VERIFIED_TAG = "maap_verified"
CONTENT_TAG = "content_sha256"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".data")  # .data: ONNX external weights


def is_unverified(tags: Mapping[str, str] | None) -> bool:
    return str((tags or {}).get(VERIFIED_TAG, "")).lower() == "false"


def content_sha256(model_dir: Path, dataset_sha256: str | None) -> str:
    """sha256 over the dataset hash and the model folder's weight files (relative path and bytes). Not the
    MLmodel file: it records when it was written (utc_time_created, model_uuid), which a rerun changes."""
    import hashlib

    digest = hashlib.sha256(f"dataset:{dataset_sha256 or NOT_RECORDED}\n".encode())
    weights = (p for p in Path(model_dir).rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    for path in sorted(weights):
        digest.update(f"{path.relative_to(model_dir).as_posix()}\n".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
NOT_RECORDED = "not recorded"


def folder_size_bytes(folder: Path) -> int:
    """Total size of the files under `folder` (apparent sizes: what an upload or a load reads)."""
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    return str(value)


def build_tags(
    metrics: Mapping[str, Any],
    decision: Mapping[str, Any],
    model_metadata: Mapping[str, Any],
    pipeline_run_id: str | None,
    step_run_id: str | None,
    model_dir: Path,
) -> dict[str, str]:
    lineage = metrics.get("lineage") or {}
    tags = {
        "base_model": str(model_metadata.get("base_model") or lineage.get("base_model") or NOT_RECORDED),
        "peft_method": str(model_metadata.get("peft_method") or lineage.get("peft_method") or NOT_RECORDED),
        "task": str(lineage.get("task") or metrics.get("task") or NOT_RECORDED),
        "dataset_sha256": str(lineage.get("dataset_sha256") or NOT_RECORDED),
        PIPELINE_RUN_TAG: str(pipeline_run_id or NOT_RECORDED),
        "register_run_id": str(step_run_id or NOT_RECORDED),
        "quality_gate": "passed" if decision.get("passed") else "failed",
        "quality_gate_metric": str(decision.get("metric") or "none"),
        "test_rows_evaluated": str(metrics.get("rows_evaluated", NOT_RECORDED)),
        MODEL_SIZE_TAG: str(folder_size_bytes(model_dir)),
    }
    for name, value in (metrics.get("finetuned") or {}).items():
        tags[f"test_{name}"] = _number(value)
        if name in (metrics.get("base") or {}):
            tags[f"test_{name}_base"] = _number(metrics["base"][name])
        if name in (metrics.get("deltas") or {}):
            tags[f"test_{name}_delta"] = _number(metrics["deltas"][name])
    tags.update(general_tags(metrics.get("general") or {}))
    return tags


def general_tags(general: Mapping[str, Any]) -> dict[str, str]:
    """Evaluate's general-ability figures, so that a model list shows what fine-tuning cost outside the task."""
    tags = {}
    drift = general.get("drift")
    if drift:
        tags["general_drift_relative"] = _number(drift["drift_relative"])
        tags["general_agreement"] = _number(drift["agreement"])
    if "general_data" in general:
        tags["general_data_loss"] = _number(general["general_data"]["finetuned_loss"])
        tags["general_data_loss_base"] = _number(general["general_data"]["base_loss"])
    for task, score in (general.get("benchmarks") or {}).items():
        tags[f"benchmark_{task}_{score['metric']}"] = _number(score["finetuned"])
        tags[f"benchmark_{task}_{score['metric']}_base"] = _number(score["base"])
    return tags


def build_description(tags: Mapping[str, str], user_description: str | None) -> str:
    generated = (
        f"{tags['base_model']} fine-tuned with {tags['peft_method']} on {tags['task']} data "
        f"(dataset sha256 {tags['dataset_sha256'][:12]}); test loss {tags.get('test_loss', NOT_RECORDED)} "
        f"(base {tags.get('test_loss_base', NOT_RECORDED)}); pipeline run {tags[PIPELINE_RUN_TAG]}."
    )
    return f"{user_description.strip()}\n\n{generated}" if user_description else generated

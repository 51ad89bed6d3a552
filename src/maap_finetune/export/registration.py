"""Register the exported folder as `<registered_model_name>-onnx`, beside the merged model.

Azure ML: a `custom_model` (an ONNX Runtime GenAI folder is no MLflow model). Local runs: a version
in the MLflow registry the tracking URI points at, uploaded to the step run as `onnx_model/`. Both
carry the same tags: the source model's registered name and version, precision, execution provider,
the pipeline run id and the parity results. Both follow Register's lifecycle (`registry.lifecycle`):
created `maap_verified: false`, the registry's copy downloaded and loaded with `onnxruntime_genai.Model`
(`load_back`), then marked verified; a verified version with the same ONNX files is reused.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import NOT_RECORDED, PIPELINE_RUN_TAG

ONNX_SUFFIX = "-onnx"
ARTIFACT_PATH = "onnx_model"


def onnx_model_name(registered_model_name: str) -> str:
    return f"{registered_model_name}{ONNX_SUFFIX}"


def source_model(registration: Path | None) -> tuple[str, str]:
    """(name, version) of the merged model Register registered, from its model_info.json."""
    if registration is None:
        return NOT_RECORDED, NOT_RECORDED
    path = registration / "model_info.json"
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"--registration {registration}: model_info.json is missing or not JSON ({err}); give "
                        "Register's registration output") from None
    if not info.get("registered"):
        return str(info.get("name") or NOT_RECORDED), NOT_RECORDED
    from maap_finetune.registry.tags import is_unverified

    if is_unverified(info.get("tags")):
        raise UserError(f"--registration {registration}: {info.get('name')}:{info.get('version')} is not verified (its "
                        "load-back check did not pass); rerun Register before exporting")
    return str(info.get("name")), str(info.get("version"))


def build_tags(report: Mapping[str, Any], source: tuple[str, str], pipeline_run_id: str | None,
               step_run_id: str | None) -> dict[str, str]:
    tf = report["agreement"]["teacher_forced"]
    parity = report.get("fp32_parity")
    return {
        "source_model_name": source[0],
        "source_model_version": source[1],
        "precision": report["precision"],
        "execution_provider": report["execution_provider"],
        "architecture": report["architecture"],
        "format": "onnxruntime-genai",
        "onnxruntime_genai_version": report["versions"]["onnxruntime_genai"],
        "fp32_parity": ("identical" if parity and parity["identical_prompts"] == parity["prompts"] else
                        "differs" if parity else "not checked"),
        "top1_agreement": f"{tf['top1_agreement']:.6g}" if tf.get("top1_agreement") is not None else NOT_RECORDED,
        "test_loss_delta": f"{tf['loss_delta']:.6g}" if tf.get("loss_delta") is not None else NOT_RECORDED,
        PIPELINE_RUN_TAG: str(pipeline_run_id or NOT_RECORDED),
        "export_run_id": str(step_run_id or NOT_RECORDED),
    }


def describe(tags: Mapping[str, str]) -> str:
    return (f"ONNX Runtime GenAI export ({tags['precision']}, {tags['execution_provider']}) of "
            f"{tags['source_model_name']} version {tags['source_model_version']}; fp32 parity {tags['fp32_parity']}, "
            f"top-1 agreement {tags['top1_agreement']}; pipeline run {tags[PIPELINE_RUN_TAG]}. Load it with "
            "onnxruntime_genai.Model(<folder>).")


def register(onnx_dir: Path, name: str, tags: dict[str, str], in_azure: bool, run, registry_name: str | None,
             ml_client=None) -> ModelInfo:
    if in_azure:
        from azure.ai.ml.constants import AssetTypes

        from maap_finetune.registry.azure import register_azure

        info = register_azure(onnx_dir, name, tags, describe(tags), registry_name, check=load_back, ml_client=ml_client,
                              model_type=AssetTypes.CUSTOM_MODEL)
    else:
        from maap_finetune.registry.local import register_local

        info = register_local(onnx_dir, name, tags, describe(tags), run, check=load_back, artifact_path=ARTIFACT_PATH)
    if info.created:
        info = dataclasses.replace(info, reason=info.reason.replace("quality gate passed", "exported and checked")
                                   .replace("and loaded", "and loaded with onnxruntime_genai.Model"))
    return info


def load_back(folder: Path) -> None:
    """The check of a downloaded ONNX Runtime GenAI folder: onnxruntime_genai loads it."""
    import onnxruntime_genai as og

    og.Model(str(folder))

"""What a local run prints when it ends: each step's time, where things are, and the registered model."""

from __future__ import annotations

import json
from pathlib import Path


def model_info_lines(model_info_path: Path) -> list[str]:
    """`model_uri: ...` from the register step's model_info.json, or why nothing was registered."""
    from maap_finetune.common.errors import UserError

    try:
        info = json.loads(model_info_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"the register step's {model_info_path} is missing or not JSON: {err}") from None
    if not isinstance(info, dict) or "registered" not in info:
        raise UserError(f"{model_info_path}: expected an object with 'registered', 'name', 'version', 'uri', 'reason'")
    if info["registered"]:
        from maap_finetune.registry.tags import is_unverified

        uri = info.get("uri") or f"models:/{info.get('name')}/{info.get('version')}"
        if is_unverified(info.get("tags")):
            return [f"model not verified: {uri} did not pass the load-back check; do not use it, rerun Register"]
        return [f"model_uri: {uri}"]
    reason = " ".join(str(info.get("reason") or "no reason given").split())
    return [f"model not registered: {reason}"]


def onnx_model_line(model_info_path: Path) -> str:
    """`onnx_model: models:/<name>-onnx/<version>` from Export ONNX's model_info.json, or why there is none."""
    line = model_info_lines(model_info_path)[0]
    if line.startswith("model_uri: "):
        return "onnx_model: " + line[len("model_uri: "):]
    for prefix in ("model not registered: ", "model not verified: "):
        if line.startswith(prefix):
            return f"onnx_model: {prefix[6:-2]} ({line[len(prefix):]})"
    return "onnx_model: " + line


def general_ability_line(evaluation: Path) -> str | None:
    """`general ability: drift +4.8% (limit +50.0%), agreement 0.014` from Evaluate's metrics and decision."""
    try:
        general = json.loads((evaluation / "metrics.json").read_text(encoding="utf-8")).get("general") or {}
        limits = json.loads((evaluation / "decision.json").read_text(encoding="utf-8")).get("general_limits") or []
    except (OSError, ValueError):
        return None
    parts = []
    drift = general.get("drift")
    if drift and isinstance(drift.get("drift_relative"), (int, float)):
        limit = next((f" (limit {item['allowed']:+.1%})" for item in limits if item["limit"] == "max_general_drift"), "")
        parts.append(f"drift {drift['drift_relative']:+.1%}{limit}, agreement {drift['agreement']:.3f}")
    for task, score in (general.get("benchmarks") or {}).items():
        parts.append(f"{task} {score['metric']} {score['base']:.3f} -> {score['finetuned']:.3f}")
    return "general ability: " + "; ".join(parts) if parts else None


def print_summary(result) -> None:
    print(f"\nlocal run {result.run_id} finished in {result.seconds:.1f} s")
    width = max(len(name) for name in result.steps) if result.steps else 0
    for name, step in result.steps.items():
        print(f"  {name:<{width}}  {step.seconds:6.1f} s")
    print(f"run_dir: {result.run_dir}")
    print(f"tracking_uri: {result.tracking_uri}")
    print(f"mlflow_run_id: {result.mlflow_run_id}")
    register = result.steps.get("register")
    if register is not None and "registration" in register.outputs:
        lines = model_info_lines(register.outputs["registration"] / "model_info.json")
        for line in lines:
            print(line)
        if lines[0].startswith("model_uri:"):
            uri = lines[0].split(": ", 1)[1]
            print(
                f"load it: MLFLOW_TRACKING_URI={result.tracking_uri} python -c "
                f"\"import mlflow; print(mlflow.pyfunc.load_model('{uri}'))\""
            )
    evaluate = result.steps.get("evaluate")
    if evaluate is not None and "evaluation" in evaluate.outputs:
        line = general_ability_line(evaluate.outputs["evaluation"])
        if line:
            print(line)
    export = result.steps.get("export_onnx")
    if export is not None and "export_report" in export.outputs:
        print(onnx_model_line(export.outputs["export_report"] / "model_info.json"))
    print(f"browse: mlflow ui --backend-store-uri {result.tracking_uri}")

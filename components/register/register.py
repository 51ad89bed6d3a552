"""Register: the fine-tuned MLflow model, with lineage and metrics as tags, if the quality gate passed.

    python register.py --mlflow_model mlflow_model/ --evaluation evaluation/ \
        --registered_model_name maap-finetuned --registration out/

Reads Evaluate's decision.json: when the gate failed nothing is registered and model_info.json says
why ({"registered": false, "reason": ...}). Otherwise registers in Azure ML when inside an Azure ML
job (`maap_finetune.registry.target.running_in_azure_ml`), from Fine-Tune's job output when its
MLmodel names one (no second upload), else in the local MLflow registry, and writes model_info.json
(registered, name, version, uri, reason). The version is tagged `maap_verified: false` until the
registry's copy is downloaded back and loads (`maap_finetune.registry.lifecycle`); a rerun on the same
weights and data (`content_sha256`), or of the same pipeline run, reuses the verified version.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maap_finetune.common.cli import StrictParser
from maap_finetune.common.errors import ConfigErrors, UserError, exit_on_user_error
from maap_finetune.common.json_files import read_json_object
from maap_finetune.registry.names import registration_name_problems



@dataclass(frozen=True)
class Config:
    mlflow_model: Path
    evaluation: Path
    model_format: str
    adapter: Path | None
    model_path: Path | None
    model_name: str | None
    registered_model_name: str
    registry_name: str | None
    model_description: str | None
    registration: Path


def build_parser() -> StrictParser:
    parser = StrictParser(description="Register the fine-tuned MLflow model if the quality gate passed.")
    parser.add_argument("--mlflow_model", type=Path, required=True)
    parser.add_argument("--evaluation", type=Path, required=True)
    parser.add_argument("--model_format", choices=["merged", "adapter"], required=True)
    parser.add_argument("--adapter", type=Path, default=None)
    parser.add_argument("--model_path", type=Path, default=None)
    parser.add_argument("--model_name", type=str, default=None)
    parser.add_argument("--registered_model_name", type=str, required=True)
    parser.add_argument("--registry_name", type=str, default=None)
    parser.add_argument("--model_description", type=str, default=None)
    parser.add_argument("--registration", type=Path, required=True)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> Config:
    config = Config(**vars(build_parser().parse_args(argv)))
    problems = registration_name_problems(config.registered_model_name, config.registry_name)
    if not (config.mlflow_model / "MLmodel").is_file():
        problems.append(f"--mlflow_model {config.mlflow_model}: MLmodel is missing (give Fine-Tune's mlflow_model output)")
    if config.model_format == "adapter":
        if config.adapter is None:
            problems.append("--model_format adapter needs --adapter (Fine-Tune's adapter output)")
        if bool(config.model_path) == bool(config.model_name):
            problems.append("--model_format adapter needs exactly one base model: --model_name (a Hugging Face id) "
                            "or --model_path (a folder; local runs only)")
    for name in ("decision.json", "metrics.json"):
        if not (config.evaluation / name).is_file():
            problems.append(f"--evaluation {config.evaluation}: {name} is missing (give Evaluate's output)")
    if problems:
        raise ConfigErrors(problems, header="register: invalid inputs")
    return config


def check_deployable(folder: Path) -> dict:
    """The MLmodel of a folder Azure ML can deploy without a scoring script; a UserError naming what lacks."""
    from maap_finetune.evaluation.lineage import read_mlmodel

    mlmodel = read_mlmodel(folder)
    missing = []
    if "transformers" not in (mlmodel.get("flavors") or {}):
        missing.append("the transformers flavor")
    if not mlmodel.get("signature"):
        missing.append("a signature")
    if not mlmodel.get("saved_input_example_info"):
        missing.append("an input example")
    flavor = (mlmodel.get("flavors") or {}).get("transformers") or {}
    if flavor.get("inference_task") == "llm/v1/chat" and not _has_chat_template(folder / "components" / "tokenizer"):
        missing.append("a chat template in components/tokenizer (the llm/v1/chat task renders requests with it)")
    if missing:
        raise UserError(f"{folder / 'MLmodel'}: the model lacks {', '.join(missing)}; save it with "
                        "maap_finetune.registry.mlflow_model.save_mlflow_model")
    return mlmodel


def package_adapter(config: Config, metadata: dict, path: Path) -> tuple[Path, dict]:
    """The adapter-only MLflow model (see maap_finetune.registry.adapter_model) and its metadata."""
    from maap_finetune.models.source import resolve_model_source
    from maap_finetune.registry.adapter_model import adapter_base, save_adapter_model

    from maap_finetune.registry.target import SOURCE_JOB, SOURCE_OUTPUT, SOURCE_WORKSPACE

    adapter_base(config.adapter)  # checks it is an adapter folder
    base = resolve_model_source(config.model_path, config.model_name)
    # This package is not Fine-Tune's output: drop the pointer to that output (see registry.target).
    metadata = {k: v for k, v in metadata.items() if k not in (SOURCE_JOB, SOURCE_OUTPUT, SOURCE_WORKSPACE)}
    metadata = {**metadata, "model_format": "adapter", "base_model": metadata.get("base_model") or base.display_name}
    tokenizer_dir = config.mlflow_model / "components" / "tokenizer"
    save_adapter_model(config.adapter, tokenizer_dir if tokenizer_dir.is_dir() else config.adapter, base.model,
                       base.is_local, path, metadata)
    print(f"[register] packaged the adapter alone; base model {base.model} "
          f"({'local folder, loads on this machine only' if base.is_local else 'fetched from the Hugging Face Hub at load'})",
          flush=True)
    return path, metadata


def _has_chat_template(tokenizer_dir: Path) -> bool:
    if (tokenizer_dir / "chat_template.jinja").is_file() or (tokenizer_dir / "chat_template.json").is_file():
        return True
    config = tokenizer_dir / "tokenizer_config.json"
    return config.is_file() and bool(read_json_object(config).get("chat_template"))


def run(config: Config):
    from maap_finetune.common import tracking
    from maap_finetune.common.scratch import scratch_folder
    from maap_finetune.evaluation.gate import read_decision
    from maap_finetune.registry import target
    from maap_finetune.registry.model_info import ModelInfo
    from maap_finetune.registry.tags import build_description, build_tags

    decision = read_decision(config.evaluation)
    metrics = read_json_object(config.evaluation / "metrics.json")
    in_azure = target.running_in_azure_ml()
    if config.registry_name and not in_azure:
        raise UserError("--registry_name names an Azure ML registry, which only an Azure ML job can write to; "
                        "leave it out for local runs (they register in the local MLflow registry)")
    metadata = check_deployable(config.mlflow_model).get("metadata") or {}
    if config.model_format == "adapter" and in_azure and not config.model_name:
        raise UserError("--model_format adapter inside Azure ML needs the base model as --model_name (a Hugging Face "
                        "id): a model_path folder exists only while its job runs, so the registered model could "
                        "never load its base; register merged instead, or give model_name")

    with tracking.step_run() as run_, scratch_folder("maap-register-") as scratch:
        step_run_id, pipeline_run_id = target.run_ids(run_)
        if not decision["passed"]:
            info = ModelInfo(registered=False, reason=str(decision.get("reason") or "the quality gate failed"),
                             name=config.registered_model_name, pipeline_run_id=pipeline_run_id)
        else:
            model_dir, source_uri = config.mlflow_model, target.job_output_uri(metadata)
            if config.model_format == "adapter":
                source_uri = None
                model_dir, metadata = package_adapter(config, metadata, Path(scratch) / "mlflow_model")
            tags = build_tags(metrics, decision, metadata, pipeline_run_id, step_run_id, model_dir)
            tags["model_format"] = config.model_format
            description = build_description(tags, config.model_description)
            if in_azure:
                from maap_finetune.registry.azure import register_azure

                info = register_azure(model_dir, config.registered_model_name, tags, description, config.registry_name,
                                      source_uri=source_uri)
            else:
                from maap_finetune.registry.local import register_local

                info = register_local(model_dir, config.registered_model_name, tags, description, run_)
        path = info.write(config.registration)
        if run_ is not None:
            import mlflow

            mlflow.set_tags({"registered": str(info.registered).lower(), "registration": info.summary()[:5000]})
            tracking.log_artifact(path, artifact_path="registration")
    print(f"[register] {info.summary()}", flush=True)
    return info


def main(argv: Sequence[str] | None = None):
    return run(parse_args(argv))


if __name__ == "__main__":
    exit_on_user_error(main)

"""Build the fine-tuning `PipelineJob` (data prep -> fine-tune -> evaluate -> register).

One factory serves the submit CLI, the local runner and the tests. Component YAMLs are the
only place defaults live: every pipeline input left unset takes the default of the component
input it feeds.

    from pipelines.factory import PipelineSettings, build_pipeline
    job = build_pipeline(PipelineSettings(compute="gpu-cluster"))
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENTS_DIR = REPO_ROOT / "components"
SAMPLE_DATA = REPO_ROOT / "data" / "sample" / "chat.jsonl"
STEP_NAMES = ("data_prep", "finetune", "evaluate", "register")

# Pipeline input -> (component folder, component input) it feeds; its default comes from there.
PIPELINE_INPUTS: dict[str, tuple[str, str]] = {
    "train_data": ("data_prep", "train_data"),
    "model_path": ("finetune", "model_path"),
    "model_name": ("finetune", "model_name"),
    "lora_r": ("finetune", "lora_r"),
    "lora_alpha": ("finetune", "lora_alpha"),
    "lora_dropout": ("finetune", "lora_dropout"),
    "epochs": ("finetune", "epochs"),
    "learning_rate": ("finetune", "learning_rate"),
    "max_seq_length": ("finetune", "max_seq_length"),
    "registered_model_name": ("register", "registered_model_name"),
}


@dataclass
class PipelineSettings:
    """Where and how to run: compute per step and fine-tune's distribution. Inputs go in `inputs`."""

    compute: str | None = None
    cpu_compute: str | None = None  # defaults to `compute`
    instance_count: int = 1
    process_count_per_instance: int = 1
    experiment_name: str = "maap-finetune"
    inputs: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=None)
def load_step_component(step: str):
    """Load one component from its YAML (cached: loading validates the schema and is slow)."""
    import warnings

    from azure.ai.ml import load_component

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The SDK warns that an environment's name is unused for anonymous registration; that is intended.
        logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
        return load_component(source=COMPONENTS_DIR / step / "spec.yaml")


def pipeline_input_defaults() -> dict[str, Any]:
    """Each pipeline input's default, read from the component input it feeds (None when optional)."""
    defaults: dict[str, Any] = {}
    for name, (step, component_input) in PIPELINE_INPUTS.items():
        spec = load_step_component(step).inputs[component_input]
        defaults[name] = getattr(spec, "default", None)
    return defaults


def _as_input(value: Any, input_type: str):
    """Wrap a path or URI in an `Input` of the component's type; leave an `Input` alone."""
    from azure.ai.ml import Input

    if value is None or isinstance(value, Input):
        return value
    return Input(type=input_type, path=str(value))


def resolve_inputs(overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge user values over component defaults; reject unknown names."""
    from maap_finetune.common.errors import UserError

    unknown = sorted(set(overrides) - set(PIPELINE_INPUTS))
    if unknown:
        raise UserError(
            f"unknown pipeline input(s): {', '.join(unknown)}; known inputs: {', '.join(sorted(PIPELINE_INPUTS))}"
        )
    values = pipeline_input_defaults()
    values.update({k: v for k, v in overrides.items()})
    if values.get("train_data") is None:
        values["train_data"] = SAMPLE_DATA
    for name in ("train_data", "model_path"):
        step, component_input = PIPELINE_INPUTS[name]
        values[name] = _as_input(values[name], load_step_component(step).inputs[component_input].type)
    if bool(values.get("model_path")) == bool(values.get("model_name")):
        raise UserError("set exactly one base model: model_path (a folder) or model_name (a Hugging Face id)")
    return values


def build_pipeline(settings: PipelineSettings):
    """Return the `PipelineJob`, with compute and distribution set per step."""
    from azure.ai.ml import dsl

    data_prep_component = load_step_component("data_prep")
    finetune_component = load_step_component("finetune")
    evaluate_component = load_step_component("evaluate")
    register_component = load_step_component("register")
    gpu_compute = settings.compute
    cpu_compute = settings.cpu_compute or settings.compute

    @dsl.pipeline(
        name="maap_finetune_pipeline",
        display_name="Fine-tune (LoRA) and register",
        description="Data prep -> fine-tune -> evaluate -> register, tracked with MLflow.",
        experiment_name=settings.experiment_name,
    )
    def finetune_pipeline(
        train_data,
        model_path,
        model_name,
        lora_r,
        lora_alpha,
        lora_dropout,
        epochs,
        learning_rate,
        max_seq_length,
        registered_model_name,
    ):
        data_prep = data_prep_component(train_data=train_data)
        data_prep.compute = cpu_compute

        finetune = finetune_component(
            train_data=data_prep.outputs.prepared_data,
            model_path=model_path,
            model_name=model_name,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            epochs=epochs,
            learning_rate=learning_rate,
            max_seq_length=max_seq_length,
        )
        finetune.compute = gpu_compute
        finetune.resources = {"instance_count": settings.instance_count}
        finetune.distribution = {"type": "pytorch", "process_count_per_instance": settings.process_count_per_instance}

        evaluate = evaluate_component(
            test_data=data_prep.outputs.prepared_data,
            mlflow_model=finetune.outputs.mlflow_model,
            model_path=model_path,
            model_name=model_name,
            max_seq_length=max_seq_length,
        )
        evaluate.compute = gpu_compute

        register = register_component(
            mlflow_model=finetune.outputs.mlflow_model,
            evaluation=evaluate.outputs.evaluation,
            registered_model_name=registered_model_name,
        )
        register.compute = cpu_compute
        return {
            "prepared_data": data_prep.outputs.prepared_data,
            "mlflow_model": finetune.outputs.mlflow_model,
            "evaluation": evaluate.outputs.evaluation,
            "registration": register.outputs.registration,
        }

    values = resolve_inputs(settings.inputs)
    job = finetune_pipeline(**values)
    job.settings.default_compute = gpu_compute
    job.settings.continue_on_step_failure = False
    return job

"""Build the fine-tuning `PipelineJob` (data prep -> fine-tune -> evaluate -> register -> export ONNX).

DSL wiring only: `build_job(resolved)` takes a plan `settings.resolve()` has checked. Each node's keywords
come from the input catalogue (`inputs.PIPELINE_INPUTS`), so a new pipeline input needs only its entry
there; the links between nodes are written out here. One factory serves the submit CLI, the local runner
and the tests:

    from pipelines.definition.build import build_pipeline, pipeline_yaml
    from pipelines.definition.settings import PipelineSettings
    job = build_pipeline(PipelineSettings(compute="gpu-cluster", inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct"}))
    print(pipeline_yaml(job))
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from maap_finetune.common.identity import IDENTITY_ENV
from maap_finetune.common.secrets import HF_TOKEN_SECRET_ENV
from pipelines.definition.environments import finetune_environment, step_component_in
from pipelines.definition.inputs import (
    FINETUNE_STEP,
    HUB_MODEL_STEPS,
    IDENTITY_STEPS,
    PIPELINE_INPUTS,
    STEP_NAMES,
    is_local_path,
    load_step_component,
)
from pipelines.definition.settings import PipelineSettings, ResolvedPipeline, resolve
from pipelines.definition.sweep import sweep_node


def build_pipeline(settings: PipelineSettings):
    """Return the `PipelineJob`, with compute and distribution set per step. Raises UserError."""
    return build_job(resolve(settings))


def job_identity(kind: str):
    """The identity a node that calls Azure runs with (see PipelineSettings.register_identity)."""
    from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration

    return UserIdentityConfiguration() if kind == "user" else ManagedIdentityConfiguration()


def catalogue_keywords(step: str, params: Mapping[str, Any], **links: Any) -> dict[str, Any]:
    """The keywords of `step`'s node: every pipeline input the catalogue routes to it, then `links`
    (other nodes' outputs, or a value that replaces the pipeline input's) in the order given."""
    fed = {component_input: params[name] for name, targets in PIPELINE_INPUTS.items()
           for target_step, component_input in targets if target_step == step}
    return {**links, **{name: value for name, value in fed.items() if name not in links}}


def _with_catalogue_signature(func):
    """`func(**params)` with one named parameter per pipeline input: the DSL reads the pipeline's inputs
    from the signature (azure.ai.ml's own dynamic functions set `__signature__` the same way)."""
    func.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in PIPELINE_INPUTS])
    return func


def build_job(resolved: ResolvedPipeline):
    """The `PipelineJob` of a resolved plan: the DSL pipeline, then per-step environment and step inputs."""
    from maap_finetune.common.errors import UserError

    settings, export = resolved.settings, resolved.export_onnx
    job = _dsl_pipeline(resolved)(**resolved.values)
    for step in IDENTITY_STEPS:  # the step's credential follows the identity given (maap_finetune.common.identity)
        if step in job.jobs:
            _add_environment(job.jobs[step], {IDENTITY_ENV: settings.register_identity})
    if settings.hf_token_secret:
        for step in HUB_MODEL_STEPS:
            _add_environment(job.jobs[step], {HF_TOKEN_SECRET_ENV: settings.hf_token_secret})
    for step, inputs in resolved.step_values.items():
        node = job.jobs[step]
        for name, value in inputs.items():
            setattr(node.inputs, name, value)
    job.settings.default_compute = settings.compute
    job.settings.continue_on_step_failure = False
    missing = set(STEP_NAMES) - set(job.jobs) - ({"export_onnx"} if not export else set())
    if missing:  # pragma: no cover - guards edits of the wiring
        raise UserError(f"pipeline lacks steps {sorted(missing)}")
    return job


def _add_environment(node, variables: Mapping[str, str]) -> None:
    node.environment_variables = {**(node.environment_variables or {}), **variables}


def _dsl_pipeline(resolved: ResolvedPipeline):
    """The DSL pipeline function. The DSL names each node after the local variable holding it (the golden
    files depend on those names), so the nodes are wired one by one, not in a loop."""
    from azure.ai.ml import dsl

    settings, export = resolved.settings, resolved.export_onnx
    components = {step: load_step_component(step) for step in STEP_NAMES if export or step != "export_onnx"}
    if (environment := finetune_environment(resolved.values)) is not None:  # grpo: the image with vLLM
        components[FINETUNE_STEP] = step_component_in(FINETUNE_STEP, environment)
    gpu_compute, cpu_compute = settings.compute, settings.cpu_compute or settings.compute
    identity = settings.register_identity

    @dsl.pipeline(
        name="maap_finetune_pipeline",
        display_name="Fine-tune, evaluate and register" + (", export ONNX" if export else ""),
        description="Data prep -> fine-tune -> evaluate -> register" + (" -> export ONNX" if export else "")
        + ", tracked with MLflow.",
        experiment_name=settings.experiment_name,
    )
    @_with_catalogue_signature
    def finetune_pipeline(**params):
        data_prep = components["data_prep"](**catalogue_keywords("data_prep", params))
        prepared = data_prep.outputs.prepared_data
        finetune = components[FINETUNE_STEP](**catalogue_keywords(FINETUNE_STEP, params, train_data=prepared))
        finetune.resources = {"instance_count": settings.instance_count}
        finetune.distribution = {"type": "pytorch", "process_count_per_instance": settings.process_count_per_instance}
        if resolved.sweep is not None:  # the node's name stays finetune; its outputs become the best trial's
            finetune = sweep_node(finetune, resolved.sweep)
        evaluate = components["evaluate"](**catalogue_keywords(
            "evaluate", params, test_data=prepared, mlflow_model=finetune.outputs.mlflow_model,
            **({} if export else {"parity_prompts": 0})))  # no Export ONNX: no parity reference
        register = components["register"](**catalogue_keywords(
            "register", params, mlflow_model=finetune.outputs.mlflow_model,
            adapter=finetune.outputs.adapter,  # used with model_format=adapter
            evaluation=evaluate.outputs.evaluation))
        data_prep.compute, register.compute = cpu_compute, cpu_compute
        finetune.compute, evaluate.compute = gpu_compute, gpu_compute
        register.identity = job_identity(identity)
        outputs = {
            "prepared_data": prepared,
            "adapter": finetune.outputs.adapter,
            "mlflow_model": finetune.outputs.mlflow_model,
            "evaluation": evaluate.outputs.evaluation,
            "registration": register.outputs.registration,
        }
        if export:  # after Register: the ONNX model is tagged with the merged model's registered version
            export_onnx = components["export_onnx"](**catalogue_keywords(
                "export_onnx", params, mlflow_model=finetune.outputs.mlflow_model,
                evaluation=evaluate.outputs.evaluation, test_data=prepared,
                registration=register.outputs.registration))
            export_onnx.compute = cpu_compute
            export_onnx.identity = job_identity(identity)  # it registers <name>-onnx
            outputs["onnx_model"] = export_onnx.outputs.onnx_model
            outputs["export_report"] = export_onnx.outputs.export_report
        return outputs

    return finetune_pipeline


def job_problems(job) -> list[str]:
    """Validate the pipeline offline (schema, bindings, required inputs); return every problem."""
    result = job._validate()
    return [f"pipeline: {where}: {message}" for where, message in sorted(result.error_messages.items())]


def _literal_fixes(job) -> dict[tuple[str, ...], Any]:
    """Values the SDK's YAML dump misprints, keyed by their place in the dumped dict.

    The dump prints a local path as `azureml:/abs/path` (at submission the SDK uploads it instead)
    and a boolean as 0/1 (the REST payload says "False"/"True"); these are put back as given.
    """
    from azure.ai.ml import Input

    def fix(value) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, Input) and value.path and is_local_path(str(value.path)):
            return {"path": str(value.path)}
        return None

    fixes: dict[tuple[str, ...], Any] = {}
    for name, pipeline_input in job.inputs.items():
        fixed = fix(pipeline_input.result())
        if fixed is not None:
            fixes[("inputs", name)] = fixed
    for node_name, node in job.jobs.items():
        for name, node_input in node.inputs.items():
            fixed = fix(getattr(node_input, "_data", None))  # the SDK has no public accessor for a literal
            if fixed is not None:
                fixes[("jobs", node_name, "inputs", name)] = fixed
    return fixes


def pipeline_dict(job) -> dict:
    """The pipeline as the YAML Azure ML receives, with local paths and booleans shown as given."""
    data = job._to_dict()
    for keys, fixed in _literal_fixes(job).items():
        parent = data
        for key in keys[:-1]:
            parent = parent[key]
        if isinstance(fixed, dict):
            parent[keys[-1]].update(fixed)
        else:
            parent[keys[-1]] = fixed
    return data


def pipeline_yaml(job) -> str:
    import yaml

    return yaml.safe_dump(pipeline_dict(job), sort_keys=False, width=100)

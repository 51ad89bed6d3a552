"""What a run asks for (`PipelineSettings`) and `resolve(settings)`: every value converted and checked once.

    from pipelines.definition.settings import PipelineSettings, resolve
    resolved = resolve(PipelineSettings(compute="gpu-cluster", inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct"}))

`resolve` collects every problem (inputs, step inputs, switches, the sweep, compute shape) into one
ConfigErrors; what it returns is what `build.build_job` wires, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipelines.definition.inputs import (
    MODEL_PATH_FORMS,
    NO_TRAINING_DATA,
    PIPELINE_INPUTS,
    REGISTER_IDENTITIES,
    STEP_NAMES,
    check_local_input,
    convert_value,
    load_step_component,
    pipeline_input_defaults,
    pipeline_input_spec,
    split_switches,
)
from pipelines.definition.sweep import SweepSpec, swept_inputs
from pipelines.definition.sweep_check import check_sweep


@dataclass
class PipelineSettings:
    """Where and how to run: compute per step and fine-tune's distribution; values in `inputs`.

    `inputs` holds pipeline inputs by name; `step_inputs` holds any other component input by step,
    e.g. {"finetune": {"gradient_checkpointing": True}}. Values may be typed (5, True, Path) or strings as
    typed on a command line ("5", "true"); both are converted by the component input's type.
    """

    compute: str | None = None
    cpu_compute: str | None = None  # defaults to `compute`
    instance_count: int = 1
    process_count_per_instance: int = 1
    experiment_name: str = "maap-finetune"
    inputs: dict[str, Any] = field(default_factory=dict)
    step_inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A submitted or local run needs a base model; a dry run or --validate may leave both unset.
    require_base_model: bool = True
    # ... and training data (train_data or train_folder): nothing trains on a silent default.
    require_training_data: bool = True
    # Name of a Key Vault secret holding a Hugging Face token (gated base models); the steps that load
    # the base model read it at run time (maap_finetune.common.secrets). Only the name is in the job.
    hf_token_secret: str | None = None
    # Whose rights Register uses to list and create models: "user" (the submitting user's; works on any
    # cluster) or "managed" (the cluster's managed identity, given its roles by infra/main.bicep).
    register_identity: str = "user"
    # A hyperparameter sweep of the Fine-Tune node (definition/sweep.py), or None.
    sweep: SweepSpec | None = None


@dataclass(frozen=True)
class ResolvedPipeline:
    """A checked plan of the pipeline: pipeline input values (defaults filled in), step inputs, the switches."""

    settings: PipelineSettings
    values: dict[str, Any]
    step_values: dict[str, dict[str, Any]]
    export_onnx: bool

    @property
    def sweep(self) -> SweepSpec | None:
        return self.settings.sweep


def resolve(settings: PipelineSettings) -> ResolvedPipeline:
    """Convert and check everything `settings` holds; raise ConfigErrors listing every problem."""
    from maap_finetune.common.errors import ConfigErrors

    problems = _check_settings(settings)
    values: dict[str, Any] = {}
    step_values: dict[str, dict[str, Any]] = {}
    inputs, switches, switch_problems = split_switches(settings.inputs)
    problems += switch_problems
    export = switches["export_onnx"]
    if not export and "export_onnx" in settings.step_inputs:
        problems.append("export_onnx.<input> is set but export_onnx=false leaves the step out; drop one of them")
    try:
        values = resolve_inputs(
            inputs,
            require_base_model=settings.require_base_model,
            require_training_data=settings.require_training_data,
        )
    except ConfigErrors as err:
        problems += err.problems
    try:
        step_values = resolve_step_inputs(settings.step_inputs)
    except ConfigErrors as err:
        problems += err.problems
    if settings.sweep is not None:
        problems += check_sweep(settings.sweep, inputs, settings.step_inputs)
        values.update({name: None for name in swept_inputs(settings.sweep) if name in values})  # no unused input
    if problems:
        raise ConfigErrors(problems, header="cannot build the pipeline")
    return ResolvedPipeline(settings, values, step_values, export)


def resolve_inputs(
    overrides: Mapping[str, Any], require_base_model: bool = True, require_training_data: bool = True
) -> dict[str, Any]:
    """Merge user values over component defaults, converting and checking each; collect all problems."""
    from maap_finetune.common.errors import ConfigErrors

    problems: list[str] = []
    unknown = sorted(set(overrides) - set(PIPELINE_INPUTS))
    for name in unknown:
        problems.append(
            f"unknown pipeline input {name!r}; pipeline inputs: {', '.join(PIPELINE_INPUTS)} "
            "(set any other component input as <step>.<input>, e.g. finetune.gradient_checkpointing)"
        )
    values = pipeline_input_defaults()
    for name, value in overrides.items():
        if name in unknown:
            continue
        try:
            values[name] = check_local_input(name, convert_value(name, pipeline_input_spec(name), value))
        except ValueError as err:
            problems.append(str(err))
    given = [name for name in ("train_data", "train_folder") if overrides.get(name) not in (None, "")]
    if require_training_data and not given:
        problems.append(NO_TRAINING_DATA)
    for name, value in list(values.items()):
        if name not in overrides and value is not None:
            try:
                values[name] = check_local_input(name, convert_value(name, pipeline_input_spec(name), value))
            except ValueError as err:
                problems.append(str(err))
    problems += _method_problems(values)
    if isinstance(values.get("registered_model_name"), str):  # Register's own check, before anything runs
        from maap_finetune.registry.names import registration_name_problems

        problems += [problem.replace("--registered_model_name ", "registered_model_name ").replace(
                         "--registry_name ", "registry_name ")
                     for problem in registration_name_problems(values["registered_model_name"], values.get("registry_name"))]
    has_path, has_name = values.get("model_path") is not None, values.get("model_name") is not None
    if has_path and has_name:
        problems.append("set one base model, not both: model_path (a folder or Azure ML model) or model_name "
                        "(a Hugging Face id)")
    elif require_base_model and not (has_path or has_name):
        problems.append(
            "set a base model: --set model_name=microsoft/Phi-3-mini-4k-instruct (a Hugging Face id) "
            f"or --set model_path={MODEL_PATH_FORMS}"
        )
    if problems:
        raise ConfigErrors(problems, header="invalid pipeline inputs")
    return values


def _method_problems(values: Mapping[str, Any]) -> list[str]:
    """Preference data trains with DPO and DPO trains on preference data: say so before submitting.
    A `models:/` URI names the local MLflow registry, which only `--local` reads."""
    problems = []
    task, method = values.get("task"), values.get("training_method")
    if task == "preference" and method != "dpo":
        problems.append(f"task preference prepares chosen/rejected pairs, which training_method {method} cannot learn "
                        "from; add --set training_method=dpo")
    elif method == "dpo" and task != "preference":
        problems.append(f"training_method dpo needs preference pairs, but task is {task}; add --set task=preference "
                        "(or use training_method sft)")
    if (task == "rft") != (method == "grpo"):
        problems.append("task rft prepares prompts to be rewarded, which only training_method grpo learns from; add "
                        "--set training_method=grpo" if task == "rft" else
                        f"training_method grpo needs task rft (prompts plus the fields the graders read), but task is "
                        f"{task}; add --set task=rft")
    if (task == "rft" or method == "grpo") and values.get("graders") is None:
        problems.append("task rft / training_method grpo need the graders file; add --set graders=<graders.json>")
    path = getattr(values.get("model_path"), "path", None)
    if isinstance(path, str) and path.startswith("models:/"):
        problems.append(f"model_path {path} is a model of the local MLflow registry, which only submit.py --local "
                        "reads; in Azure ML give azureml:<name>:<version>")
    return problems


def resolve_step_inputs(step_inputs: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Check and convert step-level inputs; refuse those a pipeline input already feeds."""
    from maap_finetune.common.errors import ConfigErrors

    fed_by = {target: name for name, targets in PIPELINE_INPUTS.items() for target in targets}
    problems: list[str] = []
    resolved: dict[str, dict[str, Any]] = {}
    for step, values in step_inputs.items():
        if step not in STEP_NAMES:
            problems.append(f"unknown step {step!r} in {step}.<input>; steps: {', '.join(STEP_NAMES)}")
            continue
        component_inputs = load_step_component(step).inputs
        for name, value in values.items():
            label = f"{step}.{name}"
            if name not in component_inputs:
                problems.append(f"unknown input {label!r}; {step} inputs: {', '.join(component_inputs)}")
            elif (step, name) in fed_by:
                problems.append(f"{label} is fed by the pipeline input {fed_by[(step, name)]!r}: set that instead")
            else:
                try:
                    converted = convert_value(label, component_inputs[name], value)
                    resolved.setdefault(step, {})[name] = check_local_input(label, converted)
                except ValueError as err:
                    problems.append(str(err))
    if problems:
        raise ConfigErrors(problems, header="invalid step inputs")
    return resolved


def _check_settings(settings: PipelineSettings) -> list[str]:
    from maap_finetune.common.errors import UserError
    from maap_finetune.common.secrets import check_secret_name

    problems = []
    if settings.hf_token_secret is not None:
        try:
            check_secret_name(settings.hf_token_secret)
        except UserError as err:
            problems.append(str(err))
    for name in ("instance_count", "process_count_per_instance"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{name} must be a whole number >= 1; got {value!r}")
    if settings.register_identity not in REGISTER_IDENTITIES:
        problems.append(f"register_identity must be one of {', '.join(REGISTER_IDENTITIES)}; "
                        f"got {settings.register_identity!r}")
    return problems

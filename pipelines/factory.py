"""Build the fine-tuning `PipelineJob` (data prep -> fine-tune -> evaluate -> register -> export ONNX).

One factory serves the submit CLI, the local runner and the tests. Component YAMLs are the
only place defaults live: every pipeline input left unset takes the default of the component
input(s) it feeds, and every value a user gives is converted and checked against the type,
`enum`, `min` and `max` of those component inputs before anything is submitted.

    from pipelines.factory import PipelineSettings, build_pipeline, pipeline_yaml
    job = build_pipeline(PipelineSettings(compute="gpu-cluster", inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct"}))
    print(pipeline_yaml(job))

Inputs come in two kinds:
- pipeline inputs (`PIPELINE_INPUTS`, `PipelineSettings.inputs`): the knobs most runs change;
- step inputs (`PipelineSettings.step_inputs`, `--set finetune.gradient_checkpointing=true` on the CLI): any other
  input of any component, set on that step alone.

One switch shapes the pipeline itself: `export_onnx` (`--set export_onnx=false`) builds it without the
Export ONNX node. It is no pipeline input, because Azure ML cannot drop a node for a value known only
at run time without a control-flow node; the pipeline is built without it instead.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.identity import IDENTITY_ENV
from maap_finetune.common.secrets import HF_TOKEN_SECRET_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
COMPONENTS_DIR = REPO_ROOT / "components"
SAMPLE_DATA = REPO_ROOT / "data" / "sample" / "chat.jsonl"
NO_TRAINING_DATA = (
    "set the training data: --set train_data=<file> (.jsonl, .json, .csv, .tsv, .parquet; a local path is "
    "uploaded, or azureml:<data>:<version>) or --set train_folder=<folder of shards>; "
    f"submit.py --sample-data trains on the bundled {SAMPLE_DATA.relative_to(REPO_ROOT)} instead"
)
STEP_NAMES = ("data_prep", "finetune", "evaluate", "register", "export_onnx")
GPU_STEPS = ("finetune", "evaluate")  # run on `compute`
CPU_STEPS = ("data_prep", "register", "export_onnx")  # run on `cpu_compute` (defaults to `compute`)
# Switches that decide whether a node is built, and their defaults: `--set export_onnx=false`.
SWITCHES: dict[str, bool] = {"export_onnx": True}
DISTRIBUTED_STEP = "finetune"  # gets instance_count and process_count_per_instance
HUB_MODEL_STEPS = ("finetune", "evaluate", "register")
IDENTITY_STEPS = ("register", "export_onnx")  # run with settings.register_identity, and told so in MAAP_JOB_IDENTITY  # load the base model (by Hub id, with a token if gated)

# Pipeline input -> the component inputs it feeds (step, input). Its type, bounds and default come
# from the first; a static test proves every target agrees on type and default.
PIPELINE_INPUTS: dict[str, tuple[tuple[str, str], ...]] = {
    "train_data": (("data_prep", "train_data"),),
    "train_folder": (("data_prep", "train_folder"),),
    "validation_data": (("data_prep", "validation_data"),),
    "test_data": (("data_prep", "test_data"),),
    "task": (("data_prep", "task"),),
    "on_invalid": (("data_prep", "on_invalid"),),
    "validation_ratio": (("data_prep", "validation_ratio"),),
    "test_ratio": (("data_prep", "test_ratio"),),
    "model_path": (
        ("data_prep", "model_path"),  # counts lengths in the base model's tokens
        ("finetune", "model_path"),
        ("evaluate", "model_path"),
        ("register", "model_path"),
    ),
    "model_name": (("finetune", "model_name"), ("evaluate", "model_name"), ("register", "model_name")),
    "chat_template": (("data_prep", "chat_template"), ("finetune", "chat_template")),
    "graders": (("data_prep", "graders"), ("finetune", "graders"), ("evaluate", "graders")),
    "trust_remote_code": (("finetune", "trust_remote_code"), ("evaluate", "trust_remote_code")),
    "peft_method": (("finetune", "peft_method"),),
    "training_method": (("finetune", "training_method"),),
    "lora_r": (("finetune", "lora_r"),),
    "lora_alpha": (("finetune", "lora_alpha"),),
    "lora_dropout": (("finetune", "lora_dropout"),),
    "epochs": (("finetune", "epochs"),),
    "learning_rate": (("finetune", "learning_rate"),),
    "per_device_train_batch_size": (("finetune", "per_device_train_batch_size"),),
    "precision": (("finetune", "precision"),),
    "deepspeed_stage": (("finetune", "deepspeed_stage"),),
    "merged_dtype": (("finetune", "merged_dtype"),),
    "max_seq_length": (
        ("data_prep", "max_seq_length"),
        ("finetune", "max_seq_length"),
        ("evaluate", "max_seq_length"),
        ("export_onnx", "max_seq_length"),
    ),
    "max_eval_samples": (("evaluate", "max_eval_samples"),),
    "max_new_tokens": (("evaluate", "max_new_tokens"),),
    "gate_metric": (("evaluate", "gate_metric"),),
    "gate_threshold": (("evaluate", "gate_threshold"),),
    "gate_min_improvement": (("evaluate", "gate_min_improvement"),),
    "registered_model_name": (("register", "registered_model_name"), ("export_onnx", "registered_model_name")),
    "model_format": (("register", "model_format"),),
    "registry_name": (("register", "registry_name"), ("export_onnx", "registry_name")),
    "onnx_precision": (("export_onnx", "precision"),),
    "onnx_execution_provider": (("export_onnx", "execution_provider"),),
    # Evaluate computes the PyTorch side of Export ONNX's parity checks; both must see the same values
    # (Evaluate gets 0 prompts, no reference, when export_onnx=false).
    "parity_prompts": (("export_onnx", "parity_prompts"), ("evaluate", "parity_prompts")),
    "parity_max_new_tokens": (("export_onnx", "parity_max_new_tokens"), ("evaluate", "parity_max_new_tokens")),
}

REGISTER_IDENTITIES = ("user", "managed")
# Input types whose value is a path or URI (wrapped in `Input`); the rest are literals.
PATH_TYPES = frozenset({"uri_file", "uri_folder", "mlflow_model", "custom_model", "triton_model", "mltable"})
# What model_path (a custom_model input) takes; azure-ai-ml resolves `azureml:name:version` of a model-typed
# input as a model asset (a uri_folder would look it up as a data asset), passes URIs through and uploads folders.
MODEL_PATH_FORMS = (
    "<folder>, azureml:<model>:<version> (a workspace model) or "
    "azureml://registries/<registry>/models/<model>/versions/<version> (a registry model)"
)
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # two letters at least: `C:\...` stays a local path


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
    # A hyperparameter sweep of the Fine-Tune node (pipelines/sweep.py: SweepSpec), or None.
    sweep: Any = None


def split_switches(inputs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, bool], list[str]]:
    """(the other inputs, each switch's value, problems): switches are taken out of `inputs`."""
    from maap_finetune.common.cli import str2bool

    rest = {k: v for k, v in inputs.items() if k not in SWITCHES}
    switches, problems = dict(SWITCHES), []
    for name in SWITCHES:
        if name in inputs and inputs[name] not in (None, ""):
            value = inputs[name]
            try:
                switches[name] = value if isinstance(value, bool) else str2bool(str(value))
            except argparse.ArgumentTypeError:
                problems.append(f"{name} expects true or false, got {value!r}")
    return rest, switches, problems


@functools.lru_cache(maxsize=None)
def load_component_file(path: Path):
    """Load a component YAML (cached: loading validates the schema and is slow)."""
    import warnings

    from azure.ai.ml import load_component

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The SDK warns that an environment's name is unused for anonymous registration; that is intended.
        logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
        return load_component(source=path)


def load_step_component(step: str):
    return load_component_file(COMPONENTS_DIR / step / "spec.yaml")


def input_spec(step: str, name: str):
    """The component input `name` of `step` (an `azure.ai.ml.Input`)."""
    return load_step_component(step).inputs[name]


def pipeline_input_spec(name: str):
    step, component_input = PIPELINE_INPUTS[name][0]
    return input_spec(step, component_input)


def pipeline_input_defaults() -> dict[str, Any]:
    """Each pipeline input's default, read from the component input it feeds (None when optional)."""
    return {name: getattr(pipeline_input_spec(name), "default", None) for name in PIPELINE_INPUTS}


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def convert_value(label: str, spec, value: Any) -> Any:
    """Convert `value` to the type of the component input `spec`; raise ValueError naming `label`.

    Strings from a command line become int/float/bool; paths become `Input(type=..., path=...)`;
    an empty string unsets the input (its YAML default, if any, applies); enum, min and max are enforced.
    """
    import argparse
    import math

    from azure.ai.ml import Input

    from maap_finetune.common.cli import str2bool

    kind = spec.type
    if isinstance(value, str) and value == "":
        value = None
    if value is None:
        if not getattr(spec, "optional", False) and getattr(spec, "default", None) is None:
            raise ValueError(f"{label} needs a value ({kind})")
        return None
    if kind in PATH_TYPES:
        if isinstance(value, Input):
            check_command_line_safe(label, str(value.path))
            return value
        if not isinstance(value, (str, Path)):
            raise ValueError(f"{label} expects a path or URI ({kind}), got {value!r}")
        check_command_line_safe(label, str(value))
        return Input(type=kind, path=str(value))
    try:
        if kind == "integer":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            converted: Any = int(value) if not isinstance(value, str) else int(value.strip())
        elif kind == "number":
            if isinstance(value, bool):
                raise ValueError
            converted = float(value)
            if not math.isfinite(converted):
                raise ValueError
        elif kind == "boolean":
            converted = value if isinstance(value, bool) else str2bool(str(value))
        else:
            converted = str(value)
    except (ValueError, TypeError, argparse.ArgumentTypeError):
        raise ValueError(f"{label} expects {'a ' if kind != 'integer' else 'an '}{kind}, got {value!r}") from None
    if kind == "string":
        check_command_line_safe(label, converted)
    enum = getattr(spec, "enum", None)
    if enum and str(converted) not in [str(option) for option in enum]:
        raise ValueError(f"{label} must be one of {', '.join(map(str, enum))}; got {converted!r}")
    low, high = _number(getattr(spec, "min", None)), _number(getattr(spec, "max", None))
    if kind in ("integer", "number"):
        if low is not None and converted < low:
            raise ValueError(f"{label} must be >= {getattr(spec, 'min')}; got {converted}")
        if high is not None and converted > high:
            raise ValueError(f"{label} must be <= {getattr(spec, 'max')}; got {converted}")
    return converted


# Inputs whose text has a file-based alternative, named in the refusal.
_FILE_ALTERNATIVE = {
    "prompt_template": "templates_file",
    "completion_template": "templates_file",
    "system_prompt": "templates_file",
}


def check_command_line_safe(label: str, text: str) -> None:
    """Refuse text that cannot travel through a component command (raise ValueError naming `label`).

    Azure ML pastes each value into the command as text and runs it in a shell; our YAMLs put free text
    and paths inside '...'. A ' in the value would end the quoting and a line break would end the
    command. Azure applies no escaping, so neither do we: such a value is refused at build time.
    """
    problem = "a single quote (')" if "'" in text else "a line break" if ("\n" in text or "\r" in text) else None
    if problem is None:
        return
    name = label.rpartition(".")[2]
    alternative = _FILE_ALTERNATIVE.get(name)
    fix = (
        f"put the text in a YAML file (keys system, prompt, completion, as in components/data_prep/templates.yaml) "
        f"and pass it as data_prep.{alternative}"
        if alternative
        else "rephrase it without ' or line breaks (write \\n for a line break where the input documents it)"
    )
    raise ValueError(
        f"{label} contains {problem}, which cannot be passed on an Azure ML command line "
        f"(values are pasted into a shell command inside '...', without escaping): {fix}"
    )


def is_local_path(path: str) -> bool:
    """True for a path on this machine, False for a URI (azureml:, https:, abfss:, ...)."""
    return not _URI_SCHEME.match(path)


def check_local_input(label: str, value) -> Any:
    """Make a local path absolute and prove it exists with the right kind (file or folder)."""
    from azure.ai.ml import Input

    if not isinstance(value, Input) or not value.path or not is_local_path(str(value.path)):
        return value
    path = Path(str(value.path)).expanduser()
    if not path.exists():
        raise ValueError(f"{label}: local path does not exist: {path}")
    if value.type == "uri_file" and not path.is_file():
        raise ValueError(f"{label}: expected a file (uri_file), got a folder: {path}")
    if value.type in PATH_TYPES - {"uri_file"} and not path.is_dir():
        raise ValueError(f"{label}: expected a folder ({value.type}), got a file: {path}")
    return Input(type=value.type, path=str(path.resolve()))


def parse_set_options(items: Iterable[str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Split `name=value` strings into pipeline inputs and `step.name=value` step inputs (raw strings)."""
    from maap_finetune.common.errors import ConfigErrors

    inputs: dict[str, str] = {}
    step_inputs: dict[str, dict[str, str]] = {}
    problems: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append(f"--set {item!r}: expected name=value (or step.name=value)")
            continue
        if "." in key:
            step, _, name = key.partition(".")
            step_inputs.setdefault(step, {})[name] = value
        else:
            inputs[key] = value
    if problems:
        raise ConfigErrors(problems, header="bad --set option")
    return inputs, step_inputs


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


def register_identity(kind: str):
    """The identity the register node runs with (see PipelineSettings.register_identity)."""
    from azure.ai.ml.entities import ManagedIdentityConfiguration, UserIdentityConfiguration

    return UserIdentityConfiguration() if kind == "user" else ManagedIdentityConfiguration()


def build_pipeline(settings: PipelineSettings):
    """Return the `PipelineJob`, with compute and distribution set per step. Raises UserError."""
    from azure.ai.ml import dsl

    from maap_finetune.common.errors import ConfigErrors, UserError

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
        from pipelines.sweep import check_sweep, sweep_node, swept_inputs

        problems += check_sweep(settings.sweep, inputs, settings.step_inputs)
        values.update({name: None for name in swept_inputs(settings.sweep) if name in values})  # no unused input
    if problems:
        raise ConfigErrors(problems, header="cannot build the pipeline")

    data_prep_component = load_step_component("data_prep")
    finetune_component = load_step_component("finetune")
    evaluate_component = load_step_component("evaluate")
    register_component = load_step_component("register")
    export_component = load_step_component("export_onnx") if export else None
    gpu_compute = settings.compute
    cpu_compute = settings.cpu_compute or settings.compute

    @dsl.pipeline(
        name="maap_finetune_pipeline",
        display_name="Fine-tune, evaluate and register" + (", export ONNX" if export else ""),
        description="Data prep -> fine-tune -> evaluate -> register" + (" -> export ONNX" if export else "")
        + ", tracked with MLflow.",
        experiment_name=settings.experiment_name,
    )
    def finetune_pipeline(
        train_data,
        train_folder,
        validation_data,
        test_data,
        task,
        on_invalid,
        validation_ratio,
        test_ratio,
        model_path,
        model_name,
        chat_template,
        graders,
        trust_remote_code,
        peft_method,
        training_method,
        lora_r,
        lora_alpha,
        lora_dropout,
        epochs,
        learning_rate,
        per_device_train_batch_size,
        precision,
        deepspeed_stage,
        merged_dtype,
        max_seq_length,
        max_eval_samples,
        max_new_tokens,
        gate_metric,
        gate_threshold,
        gate_min_improvement,
        registered_model_name,
        model_format,
        registry_name,
        onnx_precision,
        onnx_execution_provider,
        parity_prompts,
        parity_max_new_tokens,
    ):
        data_prep = data_prep_component(
            train_data=train_data,
            train_folder=train_folder,
            validation_data=validation_data,
            test_data=test_data,
            task=task,
            on_invalid=on_invalid,
            validation_ratio=validation_ratio,
            test_ratio=test_ratio,
            model_path=model_path,
            chat_template=chat_template,
            graders=graders,
            max_seq_length=max_seq_length,
        )

        finetune = finetune_component(
            train_data=data_prep.outputs.prepared_data,
            model_path=model_path,
            model_name=model_name,
            chat_template=chat_template,
            graders=graders,
            trust_remote_code=trust_remote_code,
            peft_method=peft_method,
            training_method=training_method,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            epochs=epochs,
            learning_rate=learning_rate,
            per_device_train_batch_size=per_device_train_batch_size,
            precision=precision,
            deepspeed_stage=deepspeed_stage,
            merged_dtype=merged_dtype,
            max_seq_length=max_seq_length,
        )
        finetune.resources = {"instance_count": settings.instance_count}
        finetune.distribution = {"type": "pytorch", "process_count_per_instance": settings.process_count_per_instance}
        if settings.sweep is not None:  # the node's name stays finetune; its outputs become the best trial's
            finetune = sweep_node(finetune, settings.sweep)

        evaluate = evaluate_component(
            test_data=data_prep.outputs.prepared_data,
            mlflow_model=finetune.outputs.mlflow_model,
            model_path=model_path,
            model_name=model_name,
            trust_remote_code=trust_remote_code,
            max_seq_length=max_seq_length,
            max_eval_samples=max_eval_samples,
            max_new_tokens=max_new_tokens,
            gate_metric=gate_metric,
            gate_threshold=gate_threshold,
            gate_min_improvement=gate_min_improvement,
            graders=graders,
            parity_prompts=parity_prompts if export_component is not None else 0,
            parity_max_new_tokens=parity_max_new_tokens,
        )

        register = register_component(
            mlflow_model=finetune.outputs.mlflow_model,
            adapter=finetune.outputs.adapter,  # used with model_format=adapter
            model_path=model_path,
            model_name=model_name,
            evaluation=evaluate.outputs.evaluation,
            registered_model_name=registered_model_name,
            model_format=model_format,
            registry_name=registry_name,
        )
        # (No loop over the nodes here: the DSL names each node after the local variable holding it.)
        data_prep.compute = cpu_compute
        finetune.compute = gpu_compute
        evaluate.compute = gpu_compute
        register.compute = cpu_compute
        register.identity = register_identity(settings.register_identity)
        outputs = {
            "prepared_data": data_prep.outputs.prepared_data,
            "adapter": finetune.outputs.adapter,
            "mlflow_model": finetune.outputs.mlflow_model,
            "evaluation": evaluate.outputs.evaluation,
            "registration": register.outputs.registration,
        }
        if export_component is not None:
            # After Register: the ONNX model is tagged with the merged model's registered version.
            export_onnx = export_component(
                mlflow_model=finetune.outputs.mlflow_model,
                evaluation=evaluate.outputs.evaluation,
                test_data=data_prep.outputs.prepared_data,
                registration=register.outputs.registration,
                precision=onnx_precision,
                execution_provider=onnx_execution_provider,
                max_seq_length=max_seq_length,
                parity_prompts=parity_prompts,
                parity_max_new_tokens=parity_max_new_tokens,
                registered_model_name=registered_model_name,
                registry_name=registry_name,
            )
            export_onnx.compute = cpu_compute
            export_onnx.identity = register_identity(settings.register_identity)  # it registers <name>-onnx
            outputs["onnx_model"] = export_onnx.outputs.onnx_model
            outputs["export_report"] = export_onnx.outputs.export_report
        return outputs

    job = finetune_pipeline(**values)
    for step in IDENTITY_STEPS:  # the step's credential follows the identity given (maap_finetune.common.identity)
        if step in job.jobs:
            job.jobs[step].environment_variables = {
                **(job.jobs[step].environment_variables or {}), IDENTITY_ENV: settings.register_identity}
    if settings.hf_token_secret:
        for step in HUB_MODEL_STEPS:
            job.jobs[step].environment_variables = {
                **(job.jobs[step].environment_variables or {}),
                HF_TOKEN_SECRET_ENV: settings.hf_token_secret,
            }
    for step, inputs in step_values.items():
        node = job.jobs[step]
        for name, value in inputs.items():
            setattr(node.inputs, name, value)
    job.settings.default_compute = gpu_compute
    job.settings.continue_on_step_failure = False
    missing = set(STEP_NAMES) - set(job.jobs) - ({"export_onnx"} if not export else set())
    if missing:  # pragma: no cover - guards edits of the function above
        raise UserError(f"pipeline lacks steps {sorted(missing)}")
    return job


def validate_job(job) -> list[str]:
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

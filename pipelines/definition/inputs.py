"""The pipeline's input catalogue and the rules every value passes before anything is built.

Component YAMLs are the only place defaults live: every pipeline input left unset takes the default of the
component input(s) it feeds, and every value a user gives is converted and checked against the type, `enum`,
`min` and `max` of those component inputs.

Inputs come in two kinds:
- pipeline inputs (`PIPELINE_INPUTS`): the knobs most runs change; a new one needs only an entry here;
- step inputs (`--set finetune.gradient_checkpointing=true` on the CLI): any other input of any component,
  set on that step alone.

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
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
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
FINETUNE_STEP = "finetune"  # the distributed step (instance_count, process_count_per_instance) and the swept one
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

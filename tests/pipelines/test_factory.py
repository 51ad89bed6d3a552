"""Converting and checking user values by the component input's type, as --set does."""

from __future__ import annotations

import pytest
from azure.ai.ml import Input

from maap_finetune.common.errors import ConfigErrors
from pipelines.definition.inputs import convert_value, input_spec, is_local_path, parse_set_options, pipeline_input_spec


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("lora_r", "8", 8),
        ("lora_r", 8.0, 8),
        ("learning_rate", "1e-3", 0.001),
        ("trust_remote_code", "True", True),
        ("trust_remote_code", "no", False),
        ("registered_model_name", "my-model", "my-model"),
        ("model_name", "", None),  # an empty value unsets an optional input
    ],
)
def test_values_are_converted_by_type(name, raw, expected):
    assert convert_value(name, pipeline_input_spec(name), raw) == expected


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("lora_r", "8.5", "lora_r expects an integer, got '8.5'"),
        ("lora_r", True, "lora_r expects an integer"),
        ("lora_r", "0", "lora_r must be >= 1; got 0"),
        ("lora_dropout", "0.95", "lora_dropout must be <= 0.9"),
        ("learning_rate", "nan", "learning_rate expects a number"),
        ("trust_remote_code", "maybe", "trust_remote_code expects a boolean"),
    ],
)
def test_bad_values_name_the_input(name, raw, message):
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        convert_value(name, pipeline_input_spec(name), raw)


def test_a_required_input_without_default_cannot_be_emptied():
    with pytest.raises(ValueError, match=r"^finetune.train_data needs a value \(uri_folder\)"):
        convert_value("finetune.train_data", input_spec("finetune", "train_data"), "")


def test_enum_and_paths_of_step_inputs():
    with pytest.raises(ValueError, match="finetune.peft_method must be one of lora, dora"):
        convert_value("finetune.peft_method", input_spec("finetune", "peft_method"), "adapter")
    converted = convert_value("finetune.deepspeed_config", input_spec("finetune", "deepspeed_config"), "ds.json")
    assert isinstance(converted, Input) and (converted.type, converted.path) == ("uri_file", "ds.json")


def test_parse_set_options_splits_pipeline_and_step_inputs():
    inputs, steps = parse_set_options(["lora_r=8", "model_name=org/m=x", "finetune.peft_method=dora", "evaluate.gate_metric=none"])
    assert inputs == {"lora_r": "8", "model_name": "org/m=x"}  # only the first '=' splits
    assert steps == {"finetune": {"peft_method": "dora"}, "evaluate": {"gate_metric": "none"}}
    with pytest.raises(ConfigErrors, match="expected name=value"):
        parse_set_options(["lora_r"])


@pytest.mark.parametrize(("path", "local"), [
    ("data/x.jsonl", True), ("/abs/x", True), ("C:\\data\\x", True),
    ("azureml:my-data:1", False), ("azureml://datastores/ws/paths/x", False), ("https://a/b", False),
])
def test_is_local_path(path, local):
    assert is_local_path(path) is local

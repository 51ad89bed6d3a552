"""The pipeline builds and validates offline, its wiring matches PIPELINE_INPUTS, and its YAML matches
the golden file.

Regenerate the golden file after an intended change (a component's inputs, the factory's wiring):

    UPDATE_GOLDEN=1 python -m pytest tests/static/test_pipeline.py

and review the diff of tests/golden/pipeline.yaml like code.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from maap_finetune.common.errors import ConfigErrors
from pipelines.definition.build import build_pipeline, job_problems, pipeline_yaml
from pipelines.definition.inputs import CPU_STEPS, GPU_STEPS, PIPELINE_INPUTS, REPO_ROOT, SAMPLE_DATA, STEP_NAMES, input_spec
from pipelines.definition.settings import PipelineSettings

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "pipeline.yaml"
GOLDEN_SETTINGS = PipelineSettings(
    compute="gpu-cluster",
    cpu_compute="cpu-cluster",
    instance_count=2,
    process_count_per_instance=4,
    inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct", "train_data": str(SAMPLE_DATA)},
)
_ENV_HASH = re.compile(r"\b[0-9a-f]{64}\b")  # the anonymous environment's content hash


def normalize(text: str) -> str:
    """Make the dump machine-independent: absolute paths and anonymous environment hashes."""
    return _ENV_HASH.sub("<anonymous-env-hash>", text.replace(str(REPO_ROOT), "<repo>"))


@pytest.fixture(scope="module")
def job():
    return build_pipeline(GOLDEN_SETTINGS)


def test_pipeline_builds_and_validates_offline(job):
    assert job_problems(job) == []
    assert list(job.jobs) == list(STEP_NAMES)


def test_compute_per_step_and_distribution(job):
    for step in GPU_STEPS:
        assert job.jobs[step].compute == "gpu-cluster"
    for step in CPU_STEPS:
        assert job.jobs[step].compute == "cpu-cluster"
    finetune = job.jobs["finetune"]
    assert (finetune.distribution.type, finetune.distribution.process_count_per_instance) == ("pytorch", 4)
    assert finetune.resources.instance_count == 2
    assert job.settings.default_compute == "gpu-cluster"
    assert job.settings.continue_on_step_failure is False


def test_the_issue_inputs_are_pipeline_inputs():
    required = {"train_data", "model_path", "model_name", "lora_r", "lora_alpha", "lora_dropout", "epochs",
                "learning_rate", "max_seq_length"}
    assert required <= set(PIPELINE_INPUTS)


def test_pipeline_inputs_are_wired_to_exactly_their_targets(job):
    """Every node input bound to ${{parent.inputs.X}} is listed under PIPELINE_INPUTS[X], and vice versa."""
    data = job._to_dict()
    bound: dict[str, set[tuple[str, str]]] = {}
    for step, node in data["jobs"].items():
        for name, value in (node.get("inputs") or {}).items():
            path = value.get("path") if isinstance(value, dict) else value
            match = re.fullmatch(r"\$\{\{parent\.inputs\.(\w+)\}\}", str(path))
            if match:
                bound.setdefault(match.group(1), set()).add((step, name))
    assert bound == {name: set(targets) for name, targets in PIPELINE_INPUTS.items()}


@pytest.mark.parametrize("name", list(PIPELINE_INPUTS))
def test_targets_of_a_pipeline_input_agree_on_type_and_default(name):
    specs = [input_spec(step, component_input) for step, component_input in PIPELINE_INPUTS[name]]
    first = specs[0]
    for spec in specs[1:]:
        assert spec.type == first.type, f"{name}: {PIPELINE_INPUTS[name]} disagree on type"
        assert getattr(spec, "default", None) == getattr(first, "default", None), f"{name}: defaults disagree"
        assert bool(getattr(spec, "optional", False)) == bool(getattr(first, "optional", False))


def test_unset_inputs_take_the_component_defaults(job):
    for name, pipeline_input in job.inputs.items():
        step, component_input = PIPELINE_INPUTS[name][0]
        default = getattr(input_spec(step, component_input), "default", None)
        if name not in ("train_data", "model_name") and default is not None:
            assert pipeline_input.result() == default, name


def test_cpu_compute_defaults_to_compute():
    job = build_pipeline(PipelineSettings(compute="only", inputs={"model_name": "org/model", "train_data": str(SAMPLE_DATA)}))
    assert {node.compute for node in job.jobs.values()} == {"only"}


def test_export_onnx_runs_after_the_gate_on_the_cpu_cluster_and_can_be_left_out(job):
    export = job._to_dict()["jobs"]["export_onnx"]
    assert export["compute"] == "azureml:cpu-cluster"
    assert export["inputs"]["evaluation"]["path"] == "${{parent.jobs.evaluate.outputs.evaluation}}"
    assert export["inputs"]["registration"]["path"] == "${{parent.jobs.register.outputs.registration}}"
    without = build_pipeline(PipelineSettings(compute="c", inputs={"model_name": "org/model", "export_onnx": "false", "train_data": str(SAMPLE_DATA)}))
    assert list(without.jobs) == [s for s in STEP_NAMES if s != "export_onnx"]
    assert "onnx_model" not in without.outputs and job_problems(without) == []
    with pytest.raises(ConfigErrors) as caught:
        build_pipeline(PipelineSettings(inputs={"model_name": "org/model", "export_onnx": "no way"},
                                        step_inputs={"export_onnx": {"parity_prompts": 2}}))
    assert "export_onnx expects true or false, got 'no way'" in caught.value.problems


def test_evaluate_computes_exports_parity_reference_with_the_same_values_and_none_without_export(job):
    jobs = job._to_dict()["jobs"]
    for name in ("parity_prompts", "parity_max_new_tokens"):
        assert jobs["evaluate"]["inputs"][name] == jobs["export_onnx"]["inputs"][name] == {
            "path": "${{parent.inputs.%s}}" % name}
    without = build_pipeline(PipelineSettings(compute="c", inputs={"model_name": "org/model", "export_onnx": "false",
                                                                   "train_data": str(SAMPLE_DATA)}))
    assert without._to_dict()["jobs"]["evaluate"]["inputs"]["parity_prompts"] == 0
    with pytest.raises(ConfigErrors) as caught:
        build_pipeline(PipelineSettings(inputs={"model_name": "org/model", "train_data": str(SAMPLE_DATA)},
                                        step_inputs={"evaluate": {"parity_prompts": 2}}))
    assert "evaluate.parity_prompts is fed by the pipeline input 'parity_prompts': set that instead" in caught.value.problems


def test_all_problems_are_collected():
    with pytest.raises(ConfigErrors) as caught:
        build_pipeline(PipelineSettings(
            instance_count=0,
            inputs={"lora_r": "x", "nope": 1, "model_name": "a/b", "train_folder": str(SAMPLE_DATA.parent)},
            step_inputs={"finetune": {"max_steps": "0"}, "evaluate": {"max_seq_length": 5}},
        ))
    problems = "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 5, problems
    for expected in ("instance_count must be a whole number >= 1", "lora_r expects an integer",
                     "unknown pipeline input 'nope'", "finetune.max_steps must be >= 1",
                     "evaluate.max_seq_length is fed by the pipeline input 'max_seq_length'"):
        assert expected in problems


def test_golden_pipeline_yaml(job):
    text = normalize(pipeline_yaml(job))
    assert str(REPO_ROOT) not in text  # normalized: the same file on every machine
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert GOLDEN.is_file(), "no golden file: run UPDATE_GOLDEN=1 python -m pytest tests/static/test_pipeline.py"
    expected = GOLDEN.read_text()
    assert text == expected, (
        "the pipeline YAML changed; if intended, run UPDATE_GOLDEN=1 python -m pytest tests/static/test_pipeline.py "
        "and review the diff of tests/golden/pipeline.yaml"
    )
    # The golden file is a pipeline Azure ML reads: a parseable YAML with the four steps.
    assert set(yaml.safe_load(expected)["jobs"]) == set(STEP_NAMES)

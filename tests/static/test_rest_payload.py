"""The REST payload the SDK sends for our pipeline (`job._to_rest_object()`), against golden JSON files.

Two pipelines: the default one and a multi-node DeepSpeed one. Each golden holds the pipeline job's
REST body and, per step, the component it runs with the request body of that component's environment.
Regenerate after an intended change (a component's inputs, the factory's wiring, a node's identity):

    UPDATE_GOLDEN=1 python -m pytest tests/static/test_rest_payload.py

and review the diff of tests/golden/rest_*.json like code.

Normalized, because they are not ours to pin or differ per machine:
- a node's `componentId`: at submission the SDK replaces it with the ARM id of an anonymous component
  whose version is a hash of the code snapshot; offline it is the component's YAML. Shown as
  `<component NAME:VERSION>` (the environment follows separately).
- absolute paths under the repository (a local `train_data`, which the SDK uploads at submission) ->
  `<repo>/...`. The anonymous environment's name and content-hash version are not in the request
  body, so nothing else varies: pins, Dockerfile path and build context stay in the golden.
"""

from __future__ import annotations

import json
import re
import os
from pathlib import Path

import pytest

from pipelines.definition.build import build_pipeline
from pipelines.definition.inputs import REPO_ROOT, SAMPLE_DATA
from pipelines.definition.settings import PipelineSettings
from tests.azure_fakes import request_payload

GOLDEN_DIR = Path(__file__).resolve().parents[1] / "golden"
# A current catalog model: Azure/azureml-assets assets/models/system/Phi-4/spec.yaml (version 8, no retirement tags).
REGISTRY_PHI4 = "azureml://registries/azureml/models/Phi-4/versions/8"
PIPELINES = {
    "default": PipelineSettings(
        compute="gpu-cluster", cpu_compute="cpu-cluster",
        inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct", "train_data": str(SAMPLE_DATA)},
    ),
    "deepspeed": PipelineSettings(
        compute="gpu-cluster", cpu_compute="cpu-cluster", instance_count=2, process_count_per_instance=4,
        inputs={"model_path": REGISTRY_PHI4, "train_data": str(SAMPLE_DATA), "deepspeed_stage": 3},
    ),
}
STEP_COMPUTE = {"data_prep": "cpu-cluster", "finetune": "gpu-cluster", "evaluate": "gpu-cluster", "register": "cpu-cluster",
                "export_onnx": "cpu-cluster"}
STEP_ENVIRONMENT = {"data_prep": "environments/cpu", "finetune": "environments/train-gpu",
                    "evaluate": "environments/train-gpu", "register": "environments/cpu", "export_onnx": "environments/cpu"}


def rest_payload(job) -> dict:
    """The pipeline job's REST body and each step's component and environment, normalized (see above)."""
    body = request_payload(job)
    components = {}
    for step, node in job.jobs.items():
        component = node.trial if node.type == "sweep" else node.component
        if node.type != "sweep":  # a sweep node carries its trial component inline (trial.properties.componentSpec)
            body["properties"]["jobs"][step]["componentId"] = f"<component {component.name}:{component.version}>"
        env = component.environment
        components[step] = {
            "component": f"{component.name}:{component.version}",
            "environment_folder": Path(os.path.normpath(env._base_path)).relative_to(REPO_ROOT).as_posix(),
            "environment": request_payload(env),
        }
    text = json.dumps({"job": body, "components": components}, indent=2, sort_keys=True)
    # A sweep's inline trial carries the SDK's hash of the component as loaded, absolute code path included.
    text = re.sub(r'"client_component_hash": "[0-9a-f-]+"', '"client_component_hash": "<hash of the component>"', text)
    return json.loads(text.replace(str(REPO_ROOT), "<repo>"))


@pytest.fixture(scope="module", params=list(PIPELINES))
def payload(request):
    return request.param, rest_payload(build_pipeline(PIPELINES[request.param]))


def test_rest_payload_matches_the_golden(payload):
    name, data = payload
    golden = GOLDEN_DIR / f"rest_{name}.json"
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    assert str(REPO_ROOT) not in text  # the same file on every machine
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.is_file(), "no golden file: run UPDATE_GOLDEN=1 python -m pytest tests/static/test_rest_payload.py"
    assert text == golden.read_text(), (
        f"the REST payload of the {name} pipeline changed; if intended, run "
        "UPDATE_GOLDEN=1 python -m pytest tests/static/test_rest_payload.py and review the diff of "
        f"tests/golden/rest_{name}.json"
    )


def test_each_step_runs_on_its_compute_in_its_environment(payload):
    _, data = payload
    jobs = data["job"]["properties"]["jobs"]
    assert {step: node["computeId"] for step, node in jobs.items()} == STEP_COMPUTE
    assert {step: c["environment_folder"] for step, c in data["components"].items()} == STEP_ENVIRONMENT
    for component in data["components"].values():
        build = component["environment"]["properties"]["build"]  # built from our Docker context, not a bare image
        assert build == {"contextUri": "./context", "dockerfilePath": "Dockerfile"}
    # Only the steps that register models talk to Azure from inside the job, with the register identity.
    assert sorted(step for step, node in jobs.items() if node.get("identity")) == ["export_onnx", "register"]
    assert {str(jobs[step]["identity"]) for step in ("register", "export_onnx")} == {str({"identity_type": "UserIdentity"})}


def test_distribution_and_instance_count(payload):
    name, data = payload
    jobs = data["job"]["properties"]["jobs"]
    settings = PIPELINES[name]
    assert jobs["finetune"]["distribution"] == {
        "distribution_type": "PyTorch", "process_count_per_instance": settings.process_count_per_instance,
    }
    assert jobs["finetune"]["resources"] == {"instance_count": settings.instance_count}
    for step in ("data_prep", "evaluate", "register"):
        assert "distribution" not in jobs[step] and "resources" not in jobs[step]


def test_input_types(payload):
    name, data = payload
    inputs = data["job"]["properties"]["inputs"]
    assert inputs["train_data"] == {"jobInputType": "uri_file", "uri": "<repo>/data/sample/chat.jsonl"}
    assert inputs["lora_r"] == {"jobInputType": "literal", "value": "16"}  # literals travel as strings
    assert inputs["trust_remote_code"] == {"jobInputType": "literal", "value": "False"}
    if name == "default":
        assert inputs["model_name"] == {"jobInputType": "literal", "value": "microsoft/Phi-3-mini-4k-instruct"}
        assert "model_path" not in inputs
    else:
        assert inputs["deepspeed_stage"] == {"jobInputType": "literal", "value": "3"}
        assert inputs["model_path"]["uri"] == REGISTRY_PHI4 and "model_name" not in inputs
    # Every node input is bound to a pipeline input or an upstream output, never a copied value.
    for step, node in data["job"]["properties"]["jobs"].items():
        for input_name, value in node["inputs"].items():
            assert value["value"].startswith(("${{parent.inputs.", "${{parent.jobs.")), (step, input_name)


@pytest.mark.parametrize("method, inputs, finetune_env", [
    ("sft", {}, "environments/train-gpu"),
    ("grpo", {"task": "rft", "graders": str(REPO_ROOT / "data" / "sample" / "graders.json"),
              "train_data": str(REPO_ROOT / "data" / "sample" / "rft.jsonl")}, "environments/rft-gpu"),
])
def test_finetune_runs_in_rft_gpu_for_grpo_only(method, inputs, finetune_env):
    """grpo's Fine-Tune needs vllm, which only rft-gpu holds; every other step keeps its spec's environment."""
    settings = PipelineSettings(compute="gpu-cluster", cpu_compute="cpu-cluster", inputs={
        "model_name": "microsoft/Phi-3-mini-4k-instruct", "train_data": str(SAMPLE_DATA), "training_method": method,
        **inputs})
    data = rest_payload(build_pipeline(settings))
    assert {step: c["environment_folder"] for step, c in data["components"].items()} == {
        **STEP_ENVIRONMENT, "finetune": finetune_env}
    build = data["components"]["finetune"]["environment"]["properties"]["build"]
    assert build == {"contextUri": "./context", "dockerfilePath": "Dockerfile"}
    # The anonymous environment Azure ML builds is rft-gpu's Docker context, the one that pins vllm.
    tags = data["components"]["finetune"]["environment"]["properties"]["tags"]
    assert ("vllm" in tags) == (method == "grpo"), tags

"""The REST payload of a pipeline whose Fine-Tune node is a hyperparameter sweep, against a golden JSON file.

Same normalization and regeneration as tests/static/test_rest_payload.py:

    UPDATE_GOLDEN=1 python -m pytest tests/static/test_rest_payload_sweep.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipelines.definition.build import build_pipeline, job_problems
from pipelines.definition.inputs import REPO_ROOT, SAMPLE_DATA
from pipelines.definition.settings import PipelineSettings
from pipelines.definition.sweep import sweep_from_args
from tests.static.test_rest_payload import GOLDEN_DIR, rest_payload

GOLDEN = GOLDEN_DIR / "rest_sweep.json"
SWEEP_FILE = """\
search_space:
  warmup_ratio: {type: uniform, min_value: 0.0, max_value: 0.1}
sampling_algorithm: {type: random, seed: 7}
objective: {primary_metric: eval_loss, goal: minimize}
limits: {max_total_trials: 8, max_concurrent_trials: 2, timeout: 86400}
early_termination: {type: bandit, slack_factor: 0.1, evaluation_interval: 1, delay_evaluation: 2}
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    sweep_file = tmp_path_factory.mktemp("sweep") / "sweep.yaml"
    sweep_file.write_text(SWEEP_FILE)
    spec = sweep_from_args(str(sweep_file), ["learning_rate=choice(1e-4,2e-4,5e-4)", "lora_r=choice(8,16)"],
                           ["trial_timeout=7200"])
    return build_pipeline(PipelineSettings(
        compute="gpu-cluster", cpu_compute="cpu-cluster", instance_count=2, process_count_per_instance=4,
        inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct", "train_data": str(SAMPLE_DATA)},
        step_inputs={"finetune": {"eval_steps": "10", "load_best_model_at_end": "true"}},
        sweep=spec,
    ))


@pytest.fixture(scope="module")
def payload(job):
    return rest_payload(job)


def test_sweep_payload_matches_the_golden(payload):
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    assert str(REPO_ROOT) not in text
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert GOLDEN.is_file(), "no golden file: run UPDATE_GOLDEN=1 python -m pytest tests/static/test_rest_payload_sweep.py"
    assert text == GOLDEN.read_text(), (
        "the REST payload of the sweep pipeline changed; if intended, run UPDATE_GOLDEN=1 python -m pytest "
        "tests/static/test_rest_payload_sweep.py and review the diff of tests/golden/rest_sweep.json"
    )


def test_finetune_is_a_sweep_node_with_the_objective_limits_and_policy(payload):
    node = payload["job"]["properties"]["jobs"]["finetune"]
    assert node["type"] == "sweep" and node["computeId"] == "gpu-cluster"
    assert node["objective"] == {"goal": "minimize", "primary_metric": "eval_loss"}
    assert node["sampling_algorithm"] == {"type": "random", "seed": 7}
    # timeout from the file, trial_timeout from --sweep-limit; a pipeline's sweep node carries seconds
    assert node["limits"] == {"max_total_trials": 8, "max_concurrent_trials": 2, "timeout": 86400, "trial_timeout": 7200}
    assert node["early_termination"] == {"policy_type": "Bandit", "slack_factor": 0.1, "evaluation_interval": 1,
                                         "delay_evaluation": 2}
    assert node["search_space"] == {
        "learning_rate": {"type": "choice", "values": [0.0001, 0.0002, 0.0005]},
        "lora_r": {"type": "choice", "values": [8, 16]},
        "warmup_ratio": {"type": "uniform", "min_value": 0.0, "max_value": 0.1},
    }
    # The multi-node PyTorch distribution survives the sweep: resources on the node, distribution on its trial.
    assert node["resources"] == {"instance_count": 2}
    assert node["trial"]["properties"]["componentSpec"]["distribution"] == {"type": "pytorch", "process_count_per_instance": 4}


def test_swept_inputs_are_not_bound_and_not_pipeline_inputs(payload):
    node = payload["job"]["properties"]["jobs"]["finetune"]
    for name in ("learning_rate", "lora_r", "warmup_ratio"):
        assert name not in node["inputs"]
        assert name not in payload["job"]["properties"]["inputs"]
    assert node["inputs"]["eval_steps"]["value"] == "10"  # a --set finetune.* value still reaches every trial


def test_evaluate_and_register_read_the_sweep_nodes_outputs(payload):
    jobs = payload["job"]["properties"]["jobs"]
    assert jobs["evaluate"]["inputs"]["mlflow_model"]["value"] == "${{parent.jobs.finetune.outputs.mlflow_model}}"
    assert jobs["register"]["inputs"]["adapter"]["value"] == "${{parent.jobs.finetune.outputs.adapter}}"


def test_the_sweep_pipeline_validates(job):
    assert job_problems(job) == []

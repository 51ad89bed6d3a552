"""The training_method pipeline input: it reaches Fine-Tune, and it must agree with Data Prep's task
before anything is submitted; a local-registry model_path is for --local only."""

from __future__ import annotations

import pytest

from maap_finetune.common.errors import ConfigErrors
from pipelines.definition.build import build_pipeline
from pipelines.definition.settings import PipelineSettings


def _build(**inputs):
    return build_pipeline(PipelineSettings(inputs={"model_name": "microsoft/Phi-3-mini-4k-instruct",
                                                   "train_data": "azureml:pairs:1", **inputs}))


def test_training_method_reaches_finetune():
    job = _build(task="preference", training_method="dpo")
    assert job.inputs["training_method"].result() == "dpo"
    bound = job._to_dict()["jobs"]["finetune"]["inputs"]["training_method"]
    assert (bound.get("path") if isinstance(bound, dict) else bound) == "${{parent.inputs.training_method}}"


@pytest.mark.parametrize("inputs, message", [
    ({"task": "preference"}, "training_method sft cannot learn from; add --set training_method=dpo"),
    ({"training_method": "dpo"}, "training_method dpo needs preference pairs, but task is chat"),
    ({"task": "rft", "graders": "azureml:graders:1"}, "only training_method grpo learns from; add --set "
     "training_method=grpo"),
    ({"training_method": "grpo", "graders": "azureml:graders:1"}, "training_method grpo needs task rft"),
    ({"task": "rft", "training_method": "grpo"}, "need the graders file; add --set graders=<graders.json>"),
])
def test_task_and_training_method_must_agree(inputs, message):
    with pytest.raises(ConfigErrors) as info:
        _build(**inputs)
    assert any(message in problem for problem in info.value.problems), info.value.problems


def test_a_local_registry_model_is_refused_outside_local_runs():
    with pytest.raises(ConfigErrors) as info:
        build_pipeline(PipelineSettings(inputs={"model_path": "models:/support-sft/1",
                                                "train_data": "azureml:pairs:1"}))
    assert any("only submit.py --local reads" in problem for problem in info.value.problems)


def test_graders_feed_data_prep_finetune_and_evaluate():
    job = _build(task="rft", training_method="grpo", graders="azureml:graders:1")
    for step in ("data_prep", "finetune", "evaluate"):
        bound = job._to_dict()["jobs"][step]["inputs"]["graders"]
        assert (bound.get("path") if isinstance(bound, dict) else bound) == "${{parent.inputs.graders}}", step

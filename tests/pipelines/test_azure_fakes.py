"""The shared fake MLClient (tests/azure_fakes.py) refuses calls the real SDK would not accept."""

from __future__ import annotations

import pytest

from tests.azure_fakes import fake_ml_client, operation_classes, patch_azure, rest_entity


def test_a_misspelt_method_or_operation_group_fails():
    client = fake_ml_client()
    with pytest.raises(AttributeError):
        client.jobs.submit(object())  # JobOperations has create_or_update, not submit
    with pytest.raises(AttributeError):
        client.job.create_or_update(object())  # the group is `jobs`
    with pytest.raises(AttributeError):
        client.models.register(object())


def test_a_wrong_keyword_fails_even_where_the_sdk_takes_kwargs():
    client = fake_ml_client()
    job = object()
    client.jobs.create_or_update(job, experiment_name="exp")  # the real keyword passes
    with pytest.raises(TypeError, match="experiment"):
        client.jobs.create_or_update(job, experiment="exp")  # JobOperations.create_or_update(**kwargs) would take it
    with pytest.raises(TypeError):
        client.compute.get(compute_name="gpu-cluster")  # ComputeOperations.get(name)
    with pytest.raises(TypeError):
        client.models.get("maap-finetuned", "1", "latest", "extra")


def test_the_client_constructor_and_from_config_are_checked(monkeypatch):
    fake = patch_azure(monkeypatch)
    from azure.ai.ml import MLClient  # the patched class, as the code under test imports it

    credential = object()
    assert MLClient(credential, subscription_id="s", resource_group_name="rg", workspace_name="ws") is fake.client
    scope = (fake.client.subscription_id, fake.client.resource_group_name, fake.client.workspace_name)
    assert scope == ("s", "rg", "ws")  # the real client answers its scope from these arguments
    with pytest.raises(TypeError, match="resource_group"):
        MLClient(credential, subscription_id="s", resource_group="rg", workspace_name="ws")
    assert MLClient.from_config(credential, path="config.json") is fake.client
    with pytest.raises(TypeError):
        MLClient.from_config(credential, "config.json")  # path is keyword-only


def test_every_operation_group_the_code_uses_is_specced():
    assert {"jobs", "compute", "models", "online_endpoints", "online_deployments", "environments", "components",
            "workspaces"} <= set(operation_classes())


def test_entities_come_from_the_sdks_rest_conversion():
    compute = rest_entity("compute", "compute_gpu-cluster")
    assert type(compute).__name__ == "AmlCompute" and compute.type == "amlcompute"
    assert compute.size == "STANDARD_NC24ADS_A100_V4" and compute.max_instances == 4
    job = rest_entity("job", "job_pipeline_created")
    assert type(job).__name__ == "PipelineJob" and job.name == "witty_pipeline_42"
    assert job.studio_url.startswith("https://ml.azure.com/runs/witty_pipeline_42?wsid=")
    assert job.jobs["finetune"].compute == "gpu-cluster"  # the ARM id read back as a name

"""The REST fixtures (tests/fixtures/azure_rest/) read back through the SDK's own `_from_rest_object` into the
fields the code reads, and each rebuilt fixture names the recorded (or specified) response it follows."""

from __future__ import annotations

import json
import re

import pytest

from tests.azure_fakes import FIXTURES, RECORDING_KEY, rest_entity, rest_payload

# Fixture -> (kind, what the code reads of the entity the SDK makes of it).
REBUILT = {
    "compute_gpu-cluster": "compute",
    "compute_cpu-cluster": "compute",
    "job_pipeline_created": "job",
    "model_maap-finetuned_1": "model",
    "model_other_1": "model",
    "model_azureml_Phi-3-mini-4k-instruct_15": "model",
    "model_azureml_Phi-4-mini-instruct_1": "model",
    "model_azureml-meta_Meta-Llama-3.1-8B-Instruct_4": "model",
    "registry_azureml": "registry",
    "workspace_ws-ml": "workspace",
    "marketplace_subscription_Meta-Llama-3-1-8B-Instruct-sub": "marketplace_subscription",
}


@pytest.mark.parametrize("fixture", sorted(REBUILT))
def test_each_rebuilt_fixture_names_its_source_with_a_commit(fixture):
    source = json.loads((FIXTURES / f"{fixture}.json").read_text())[RECORDING_KEY]
    assert re.search(r"\b(Azure/azure-sdk-assets|Azure/azure-rest-api-specs|azure-ai-ml \d)", source), source
    assert re.search(r"\b[0-9a-f]{40}\b", source) or "REST model" in source, source
    assert RECORDING_KEY not in rest_payload(fixture)


def test_the_pipeline_job_reads_back_with_typed_outputs_and_service_properties():
    job = rest_entity("job", "job_pipeline_created")
    assert type(job).__name__ == "PipelineJob" and job.status == "Preparing"
    assert {name: output.type for name, output in job.outputs.items()} == {"mlflow_model": "mlflow_model",
                                                                          "registration": "uri_folder"}
    assert job.properties["azureml.runsource"] == "azureml.PipelineRun"
    assert job.properties["azureml.defaultDataStoreName"] == "workspaceblobstore"
    assert job.studio_url.startswith("https://ml.azure.com/runs/witty_pipeline_42?wsid=")
    register = job.jobs["register"]
    assert register.compute == "cpu-cluster" and type(register.identity).__name__ == "UserIdentityConfiguration"
    assert register.environment_variables == {"MAAP_JOB_IDENTITY": "user"}


@pytest.mark.parametrize(("fixture", "name", "version", "job_name"), [
    ("model_maap-finetuned_1", "maap-finetuned", "1", None),
    ("model_azureml_Phi-3-mini-4k-instruct_15", "Phi-3-mini-4k-instruct", "15", None),
])
def test_models_read_back_with_the_fields_the_service_adds(fixture, name, version, job_name):
    payload = rest_payload(fixture)["properties"]
    assert {"jobName", "provisioningState", "autoDeleteSetting", "intellectualProperty"} <= set(payload)
    model = rest_entity("model", fixture)
    assert (model.name, model.version, model.job_name, model.type) == (name, version, job_name, "mlflow_model")
    assert model.creation_context.created_by


@pytest.mark.parametrize(("fixture", "size", "max_instances"), [("compute_gpu-cluster", "STANDARD_NC24ADS_A100_V4", 4),
                                                                  ("compute_cpu-cluster", None, None)])
def test_clusters_read_back_as_amlcompute(fixture, size, max_instances):
    compute = rest_entity("compute", fixture)
    assert type(compute).__name__ == "AmlCompute" and compute.type == "amlcompute"
    if size:
        assert (compute.size, compute.max_instances) == (size, max_instances)


def test_the_registry_workspace_and_subscription_read_back():
    registry = rest_entity("registry", "registry_azureml")
    assert [r.location for r in registry.replication_locations] == ["eastus", "eastus2", "westus3", "swedencentral"]
    workspace = rest_entity("workspace", "workspace_ws-ml")
    assert workspace.location == "eastus2" and workspace.key_vault.endswith("/vaults/kvwsml0001")
    subscription = rest_entity("marketplace_subscription", "marketplace_subscription_Meta-Llama-3-1-8B-Instruct-sub")
    assert (subscription.status, subscription.provisioning_state) == ("subscribed", "succeeded")
    assert subscription.model_id == "azureml://registries/azureml-meta/models/Meta-Llama-3.1-8B-Instruct"

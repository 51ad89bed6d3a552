"""The Azure ML side of Register with a fake MLClient, and the rule that tells Azure from local."""

from __future__ import annotations

import json

import pytest

from maap_finetune.registry import azure, target
from tests.helpers import argv_from_spec, load_entry

AZURE_ENV = {
    "AZUREML_RUN_ID": "register_step_1",
    "AZUREML_ROOT_RUN_ID": "pipeline_job_7",
    "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
    "AZUREML_ARM_RESOURCEGROUP": "rg-ml",
    "AZUREML_ARM_WORKSPACE_NAME": "ws-ml",
}


class FakeModels:
    """Azure ML's model operations as far as Register uses them, backed by a list."""

    def __init__(self):
        self.created = []

    def list(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        found = [m for m in self.created if m.name == name]
        if not found:
            raise ResourceNotFoundError(f"model {name} not found")
        return iter(found)

    def create_or_update(self, model):
        model.version = str(sum(m.name == model.name for m in self.created) + 1)
        self.created.append(model)
        return model


class FakeMLClient:
    instances: list = []

    def __init__(self, credential, subscription_id=None, resource_group_name=None, workspace_name=None,
                 registry_name=None, **kwargs):
        self.credential = credential
        self.scope = dict(subscription_id=subscription_id, resource_group_name=resource_group_name,
                          workspace_name=workspace_name, registry_name=registry_name)
        self.models = FakeModels() if not FakeMLClient.instances else FakeMLClient.instances[0].models
        FakeMLClient.instances.append(self)


@pytest.fixture
def azure_job(monkeypatch):
    for key, value in AZURE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("DEFAULT_IDENTITY_CLIENT_ID", "OBO_ENDPOINT"):
        monkeypatch.delenv(key, raising=False)
    FakeMLClient.instances = []
    monkeypatch.setattr("azure.ai.ml.MLClient", FakeMLClient)
    return FakeMLClient


def run_register(tmp_path, model, evaluation, out="registration", **values):
    argv = argv_from_spec("register", mlflow_model=model, evaluation=evaluation, registration=tmp_path / out, **values)
    load_entry("register").main(argv)
    return json.loads((tmp_path / out / "model_info.json").read_text())


def test_registers_in_the_workspace_once_per_pipeline_run(tmp_path, mlflow_tracking, azure_job,
                                                          finetuned_mlflow_model, evaluation_passed):
    from azure.identity import DefaultAzureCredential

    info = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    client = azure_job.instances[0]
    assert client.scope == {"subscription_id": AZURE_ENV["AZUREML_ARM_SUBSCRIPTION"], "resource_group_name": "rg-ml",
                            "workspace_name": "ws-ml", "registry_name": None}
    assert isinstance(client.credential, DefaultAzureCredential)
    [model] = client.models.created
    assert model.type == "mlflow_model" and model.name == "maap-finetuned"
    assert str(model.path) == str(finetuned_mlflow_model)
    assert model.tags["pipeline_run_id"] == "pipeline_job_7" and model.tags["base_model"] == "tiny-phi3"
    assert all(isinstance(v, str) for v in model.tags.values())
    assert "pipeline run pipeline_job_7" in model.description
    assert info == {**info, "registered": True, "name": "maap-finetuned", "version": "1",
                    "uri": "azureml:maap-finetuned:1", "target": "workspace", "created": True}

    again = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    assert len(client.models.created) == 1
    assert again["version"] == "1" and again["created"] is False and "no new version" in again["reason"]


def test_registers_in_a_named_registry(tmp_path, mlflow_tracking, azure_job, finetuned_mlflow_model,
                                       evaluation_passed):
    info = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, registry_name="shared-models")
    assert azure_job.instances[0].scope["registry_name"] == "shared-models"
    assert azure_job.instances[0].scope["subscription_id"] is None
    assert info["uri"] == "azureml://registries/shared-models/models/maap-finetuned/versions/1"
    assert info["target"] == "registry"


def test_failing_gate_creates_nothing_in_azure(tmp_path, mlflow_tracking, azure_job, untrained_mlflow_model,
                                               evaluation_failed):
    info = run_register(tmp_path, untrained_mlflow_model, evaluation_failed)
    assert info["registered"] is False and info["reason"].startswith("quality gate failed")
    assert azure_job.instances == []  # no client was even built


def test_permission_error_is_one_clear_line(tmp_path, mlflow_tracking, azure_job, monkeypatch,
                                            finetuned_mlflow_model, evaluation_passed):
    from azure.core.exceptions import HttpResponseError

    from maap_finetune.common.errors import UserError

    def refuse(self, model):
        err = HttpResponseError("AuthorizationFailed: no models/write")
        err.status_code = 403
        raise err

    monkeypatch.setattr(FakeModels, "create_or_update", refuse)
    with pytest.raises(UserError, match=r"may not register models in the workspace \(HTTP 403\)"):
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, False),
        ({"MLFLOW_TRACKING_URI": "sqlite:///mlruns.db", "MLFLOW_RUN_ID": "abc"}, False),
        ({"AZUREML_RUN_ID": "r1"}, False),  # a run id alone (e.g. copied into a shell) is not a job
        ({"AZUREML_RUN_ID": "r1", "AZUREML_ARM_SUBSCRIPTION": "s"}, True),
        ({"MLFLOW_TRACKING_URI": "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s/resourceGroups/g"
                                 "/providers/Microsoft.MachineLearningServices/workspaces/w"}, True),
    ],
)
def test_azure_or_local_rule(environ, expected):
    assert target.running_in_azure_ml(environ) is expected


def test_workspace_from_tracking_uri_when_arm_variables_are_missing():
    uri = ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/sub-1/resourceGroups/rg-2"
           "/providers/Microsoft.MachineLearningServices/workspaces/ws-3")
    assert target.job_workspace({"MLFLOW_TRACKING_URI": uri}) == target.Workspace("sub-1", "rg-2", "ws-3")
    from maap_finetune.common.errors import UserError

    with pytest.raises(UserError, match="AZUREML_ARM_RESOURCEGROUP, AZUREML_ARM_WORKSPACE_NAME are not set"):
        target.job_workspace({"AZUREML_ARM_SUBSCRIPTION": "s"})


def test_pipeline_run_id_rule():
    assert target.pipeline_run_id("step", "parent", {}) == "parent"
    assert target.pipeline_run_id("step", None, {}) == "step"
    assert target.pipeline_run_id("step", "parent", AZURE_ENV) == "pipeline_job_7"
    in_job = {k: v for k, v in AZURE_ENV.items() if k != "AZUREML_ROOT_RUN_ID"}
    assert target.pipeline_run_id("step", "parent", in_job, root_run_id="root") == "root"
    assert target.pipeline_run_id("step", "parent", in_job, root_run_id=None) == "parent"
    assert target.pipeline_run_id("step", "parent", {}, root_run_id="root") == "parent"  # local: the parent


def test_job_credential_choice():
    from azure.ai.ml.identity import AzureMLOnBehalfOfCredential
    from azure.identity import DefaultAzureCredential, ManagedIdentityCredential

    assert isinstance(azure.job_credential({"DEFAULT_IDENTITY_CLIENT_ID": "cid"}), ManagedIdentityCredential)
    assert isinstance(azure.job_credential({"OBO_ENDPOINT": "http://127.0.0.1:1/obo"}), AzureMLOnBehalfOfCredential)
    assert isinstance(azure.job_credential({}), DefaultAzureCredential)


def test_adapter_format_in_azure_needs_a_hub_base(tmp_path, mlflow_tracking, azure_job, tiny_model_dir,
                                                  finetuned_mlflow_model, evaluation_passed):
    from maap_finetune.common.errors import UserError

    with pytest.raises(UserError, match="inside Azure ML needs the base model as --model_name"):
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, model_format="adapter",
                     adapter=tmp_path, model_path=tiny_model_dir)
    assert azure_job.instances == []

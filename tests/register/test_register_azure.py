"""The Azure ML side of Register against the autospecced MLClient of tests/azure_fakes.py, and the rule
that tells Azure from local."""

from __future__ import annotations

import json
import os

import pytest

from maap_finetune.registry import azure, target
from tests.azure_fakes import AZURE_JOB_ENV, ModelStore, patch_azure
from tests.helpers import argv_from_spec, load_entry

AZURE_ENV = AZURE_JOB_ENV


@pytest.fixture
def azure_job(monkeypatch):
    """Inside a pipeline job, with an autospecced MLClient (tests/azure_fakes.py) and an empty model store."""
    for key, value in AZURE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("DEFAULT_IDENTITY_CLIENT_ID", "OBO_ENDPOINT", "AZUREML_OBO_ENABLED", "MAAP_JOB_IDENTITY"):
        monkeypatch.delenv(key, raising=False)
    fake = patch_azure(monkeypatch, credential=False)  # the real credential classes: nothing is fetched
    fake.models = ModelStore(fake.client.models)
    return fake


def run_register(tmp_path, model, evaluation, out="registration", **values):
    argv = argv_from_spec("register", mlflow_model=model, evaluation=evaluation, registration=tmp_path / out, **values)
    load_entry("register").main(argv)
    return json.loads((tmp_path / out / "model_info.json").read_text())


def test_registers_in_the_workspace_once_per_pipeline_run(tmp_path, mlflow_tracking, azure_job,
                                                          finetuned_mlflow_model, evaluation_passed):
    from azure.identity import DefaultAzureCredential

    info = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    azure_job.cls.assert_called_once()
    assert azure_job.cls.call_args.kwargs == {"subscription_id": AZURE_ENV["AZUREML_ARM_SUBSCRIPTION"],
                                              "resource_group_name": "rg-ml", "workspace_name": "ws-ml"}
    assert isinstance(azure_job.cls.call_args.args[0], DefaultAzureCredential)
    [model] = azure_job.models.requests  # what Register asked Azure to create
    assert model.type == "mlflow_model" and model.name == "maap-finetuned"
    assert str(model.path) == str(finetuned_mlflow_model)
    assert model.tags["pipeline_run_id"] == "pipeline_job_7" and model.tags["base_model"] == "tiny-phi3"
    assert all(isinstance(v, str) for v in model.tags.values())
    files = [p for p in finetuned_mlflow_model.rglob("*") if p.is_file()]
    assert int(model.tags["model_size_bytes"]) == sum(os.path.getsize(p) for p in files) > 0
    assert "pipeline run pipeline_job_7" in model.description
    assert info == {**info, "registered": True, "name": "maap-finetuned", "version": "1",
                    "uri": "azureml:maap-finetuned:1", "target": "workspace", "created": True}

    again = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    assert len(azure_job.models.requests) == 1
    assert again["version"] == "1" and again["created"] is False and "no new version" in again["reason"]


def test_registers_in_a_named_registry(tmp_path, mlflow_tracking, azure_job, finetuned_mlflow_model,
                                       evaluation_passed):
    info = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, registry_name="shared-models")
    assert azure_job.cls.call_args.kwargs == {"registry_name": "shared-models"}
    assert info["uri"] == "azureml://registries/shared-models/models/maap-finetuned/versions/1"
    assert info["target"] == "registry"


def test_failing_gate_creates_nothing_in_azure(tmp_path, mlflow_tracking, azure_job, untrained_mlflow_model,
                                               evaluation_failed):
    info = run_register(tmp_path, untrained_mlflow_model, evaluation_failed)
    assert info["registered"] is False and info["reason"].startswith("quality gate failed")
    azure_job.cls.assert_not_called()  # no client was even built


def test_permission_error_is_one_clear_line(tmp_path, mlflow_tracking, azure_job, monkeypatch,
                                            finetuned_mlflow_model, evaluation_passed):
    from azure.core.exceptions import HttpResponseError

    from maap_finetune.common.errors import UserError

    err = HttpResponseError("AuthorizationFailed: no models/write")
    err.status_code = 403
    azure_job.client.models.create_or_update.side_effect = err
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
    assert isinstance(azure.job_credential({"AZUREML_OBO_ENABLED": "True"}), AzureMLOnBehalfOfCredential)
    assert isinstance(azure.job_credential({}), DefaultAzureCredential)


def test_adapter_format_in_azure_needs_a_hub_base(tmp_path, mlflow_tracking, azure_job, tiny_model_dir,
                                                  finetuned_mlflow_model, evaluation_passed):
    from maap_finetune.common.errors import UserError

    with pytest.raises(UserError, match="inside Azure ML needs the base model as --model_name"):
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, model_format="adapter",
                     adapter=tmp_path, model_path=tiny_model_dir)
    azure_job.cls.assert_not_called()

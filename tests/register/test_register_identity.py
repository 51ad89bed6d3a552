"""Register in Azure ML with autospec'd SDK fakes: refused identities give one clear message, and the
model is created from Fine-Tune's job output rather than uploaded again."""

from __future__ import annotations

import json
import shutil
from unittest import mock

import pytest
import yaml

from maap_finetune.common.errors import UserError
from maap_finetune.registry import target
from tests.azure_fakes import AZURE_JOB_ENV, ModelStore
from tests.helpers import argv_from_spec, load_entry

AZURE_ENV = AZURE_JOB_ENV
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
# As the pipeline runs the node (MAAP_JOB_IDENTITY from --register-identity) and Azure ML sets up each identity:
# a user-identity job carries the cluster's DEFAULT_IDENTITY_CLIENT_ID too.
MANAGED = {"MAAP_JOB_IDENTITY": "managed", "DEFAULT_IDENTITY_CLIENT_ID": CLIENT_ID}
USER = {"MAAP_JOB_IDENTITY": "user", "AZUREML_OBO_ENABLED": "True", "OBO_ENDPOINT": "http://127.0.0.1:1/obo",
        "DEFAULT_IDENTITY_CLIENT_ID": CLIENT_ID}


def http_error(status: int, message: str):
    from azure.core.exceptions import HttpResponseError

    err = HttpResponseError(message=message)
    err.status_code = status
    return err


@pytest.fixture
def sdk(monkeypatch, tmp_path):
    """MLClient replaced by an autospec of the class; its `models` an autospec of ModelOperations backed by a
    ModelStore that keeps the files (tests/azure_fakes.py)."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.operations import ModelOperations

    models = mock.create_autospec(ModelOperations, instance=True)
    store = ModelStore(models, storage=tmp_path / "storage")
    client = mock.NonCallableMock(spec=["models"])
    client.models = models
    cls = mock.create_autospec(MLClient, return_value=client)
    monkeypatch.setattr("azure.ai.ml.MLClient", cls)
    for key in ("DEFAULT_IDENTITY_CLIENT_ID", "OBO_ENDPOINT", "AZUREML_OBO_ENABLED", "MAAP_JOB_IDENTITY"):
        monkeypatch.delenv(key, raising=False)
    for key, value in AZURE_ENV.items():
        monkeypatch.setenv(key, value)
    return mock.NonCallableMock(cls=cls, models=models, store=store)


def run_register(tmp_path, model, evaluation, **values):
    out = tmp_path / "registration"
    load_entry("register").main(argv_from_spec("register", mlflow_model=model, evaluation=evaluation,
                                               registration=out, **values))
    return json.loads((out / "model_info.json").read_text())


def with_job_output(model_dir, folder, job="finetune_step_5", workspace=None):
    """A copy of `model_dir` whose MLmodel names the job output it came from, as Fine-Tune writes it inside Azure ML."""
    shutil.copytree(model_dir, folder)
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    env = {**AZURE_ENV, "AZUREML_RUN_ID": job}
    if workspace:
        env["AZUREML_ARM_WORKSPACE_NAME"] = workspace
    mlmodel["metadata"] = {**mlmodel.get("metadata", {}), **target.job_output_metadata("mlflow_model", env)}
    (folder / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return folder


def test_workspace_model_is_created_from_the_finetune_job_output(tmp_path, mlflow_tracking, sdk,
                                                                  finetuned_mlflow_model, evaluation_passed):
    model_dir = with_job_output(finetuned_mlflow_model, tmp_path / "mounted_output")
    sdk.store.job_outputs["azureml://jobs/finetune_step_5/outputs/mlflow_model"] = model_dir
    info = run_register(tmp_path, model_dir, evaluation_passed)
    model = sdk.store.requests[0]  # the create (the second request marks it verified)
    assert model.path == "azureml://jobs/finetune_step_5/outputs/mlflow_model"  # no local path: nothing uploaded
    assert model.type == "mlflow_model"
    assert info["uri"] == "azureml:maap-finetuned:1" and "(no upload)" in info["reason"]
    sdk.models.list.assert_called_once_with(name="maap-finetuned")


def test_the_sdk_uploads_nothing_for_a_job_output_path():
    """What ModelOperations.create_or_update does with such a path (azure-ai-ml's own upload check)."""
    from azure.ai.ml._artifacts._artifact_utilities import _check_and_upload_path
    from azure.ai.ml.entities import Model
    from azure.ai.ml.operations import ModelOperations

    operations = mock.create_autospec(ModelOperations, instance=True)
    model = Model(name="m", path="azureml://jobs/finetune_step_5/outputs/mlflow_model", type="mlflow_model")
    with mock.patch("azure.ai.ml._artifacts._artifact_utilities._upload_to_datastore") as upload:
        checked, indicator = _check_and_upload_path(model, operations, "model")
    upload.assert_not_called()
    assert checked.path == "azureml://jobs/finetune_step_5/outputs/mlflow_model" and indicator is None


@pytest.mark.parametrize("workspace", ["another-ws", None])
def test_folder_is_uploaded_when_no_job_output_of_this_workspace_is_known(workspace, tmp_path, mlflow_tracking, sdk,
                                                                         finetuned_mlflow_model, evaluation_passed):
    model_dir = (with_job_output(finetuned_mlflow_model, tmp_path / "copy", workspace=workspace) if workspace
                 else finetuned_mlflow_model)
    info = run_register(tmp_path, model_dir, evaluation_passed)
    assert sdk.store.requests[0].path == str(model_dir)
    assert f"uploaded from {model_dir}" in info["reason"]


def test_registry_target_uploads_the_folder(tmp_path, mlflow_tracking, sdk, finetuned_mlflow_model, evaluation_passed):
    model_dir = with_job_output(finetuned_mlflow_model, tmp_path / "mounted_output")
    info = run_register(tmp_path, model_dir, evaluation_passed, registry_name="shared-models")
    assert sdk.cls.call_args.kwargs == {"registry_name": "shared-models"}
    assert sdk.store.requests[0].path == str(model_dir)  # a registry reads no job output
    assert info["uri"] == "azureml://registries/shared-models/models/maap-finetuned/versions/1"


def test_403_building_a_registry_client_names_identity_and_role(tmp_path, mlflow_tracking, sdk, monkeypatch,
                                                                finetuned_mlflow_model, evaluation_passed):
    for key, value in MANAGED.items():
        monkeypatch.setenv(key, value)
    sdk.cls.side_effect = http_error(403, "AuthorizationFailed: the client has no access to registry shared-models")
    with pytest.raises(UserError) as err:
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, registry_name="shared-models")
    message = str(err.value)
    assert "compute cluster's managed identity (--register-identity managed)" in message
    assert "may not register models in Azure ML registry shared-models (HTTP 403): AuthorizationFailed" in message
    assert "'AzureML Registry User' role on the registry 'shared-models'" in message
    assert "infra/main.bicep" in message and "--register-identity user" in message
    sdk.models.create_or_update.assert_not_called()


def test_token_failure_of_the_user_identity_is_one_clear_message(tmp_path, mlflow_tracking, sdk, monkeypatch,
                                                                 finetuned_mlflow_model, evaluation_passed):
    from azure.core.exceptions import ClientAuthenticationError

    for key, value in USER.items():
        monkeypatch.setenv(key, value)
    sdk.models.list.side_effect = ClientAuthenticationError("OBO token request failed\nsecond line")
    with pytest.raises(UserError) as err:
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    message = str(err.value)
    assert message.startswith("Register could not get a token for the submitting user's identity "
                              "(--register-identity user) to register in the workspace (OBO token request failed)")
    assert "'AzureML Data Scientist' role on the workspace (ask an owner to)" in message
    assert "second line" not in message and "--register-identity managed" in message


def test_401_from_the_workspace_is_a_user_error_and_other_errors_are_not(tmp_path, mlflow_tracking, sdk,
                                                                          finetuned_mlflow_model, evaluation_passed):
    sdk.models.create_or_update.side_effect = http_error(401, "InvalidAuthenticationToken")
    with pytest.raises(UserError, match=r"the job's default credential .* \(HTTP 401\): InvalidAuthenticationToken"):
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    from azure.core.exceptions import HttpResponseError

    sdk.models.create_or_update.side_effect = http_error(500, "InternalServerError")
    with pytest.raises(HttpResponseError):  # not the user's to fix: not turned into a UserError
        run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)


def test_job_output_uri_rules():
    metadata = target.job_output_metadata("mlflow_model", AZURE_ENV)
    assert metadata == {"azureml_job": "register_step_1", "azureml_output": "mlflow_model",
                        "azureml_workspace": "00000000-0000-0000-0000-000000000001/rg-ml/ws-ml"}
    assert target.job_output_uri(metadata, AZURE_ENV) == "azureml://jobs/register_step_1/outputs/mlflow_model"
    assert target.job_output_metadata("mlflow_model", {}) == {}  # a local run records nothing
    assert target.job_output_uri(metadata, {}) is None  # nor is a job URI used outside Azure ML
    other = {**AZURE_ENV, "AZUREML_ARM_WORKSPACE_NAME": "other"}
    assert target.job_output_uri(metadata, other) is None
    assert target.job_output_uri({}, AZURE_ENV) is None

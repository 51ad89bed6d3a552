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
def azure_job(monkeypatch, tmp_path):
    """Inside a pipeline job, with an autospecced MLClient (tests/azure_fakes.py) and an empty model store
    that keeps the registered files under tmp_path/storage."""
    for key, value in AZURE_ENV.items():
        monkeypatch.setenv(key, value)
    for key in ("DEFAULT_IDENTITY_CLIENT_ID", "OBO_ENDPOINT", "AZUREML_OBO_ENABLED", "MAAP_JOB_IDENTITY"):
        monkeypatch.delenv(key, raising=False)
    fake = patch_azure(monkeypatch, credential=False)  # the real credential classes: nothing is fetched
    fake.models = ModelStore(fake.client.models, storage=tmp_path / "storage")
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
    model, marked = azure_job.models.requests  # what Register asked Azure: create, then mark verified
    assert model.type == "mlflow_model" and model.name == "maap-finetuned"
    assert model.tags["maap_verified"] == "false" and len(model.tags["content_sha256"]) == 64
    assert (marked.name, marked.version, marked.tags["maap_verified"]) == ("maap-finetuned", "1", "true")
    assert azure_job.models.get("maap-finetuned", "1").tags == {**model.tags, "maap_verified": "true"}
    assert azure_job.client.models.download.call_count == 1
    assert str(model.path) == str(finetuned_mlflow_model)
    assert model.tags["pipeline_run_id"] == "pipeline_job_7" and model.tags["base_model"] == "tiny-phi3"
    assert all(isinstance(v, str) for v in model.tags.values())
    files = [p for p in finetuned_mlflow_model.rglob("*") if p.is_file()]
    assert int(model.tags["model_size_bytes"]) == sum(os.path.getsize(p) for p in files) > 0
    assert "pipeline run pipeline_job_7" in model.description
    assert info == {**info, "registered": True, "name": "maap-finetuned", "version": "1",
                    "uri": "azureml:maap-finetuned:1", "target": "workspace", "created": True}

    again = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    assert len(azure_job.models.requests) == 2
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


def _cut_short(copy):
    """An upload cut short: the stored copy's largest weights file is half its size."""
    weights = max(copy.rglob("*.safetensors"), key=os.path.getsize)
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)


def _does_not_load(folder, *args, **kwargs):
    raise OSError(f"{folder}: no model could be built from these files")


@pytest.mark.parametrize("damage", ["cut short", "does not load"])
def test_a_copy_that_fails_the_check_stays_unverified_deploy_refuses_it_and_a_rerun_makes_a_new_version(
        tmp_path, mlflow_tracking, azure_job, monkeypatch, finetuned_mlflow_model, evaluation_passed, damage):
    import mlflow.pyfunc

    from maap_finetune.common.errors import UserError
    from maap_finetune.registry.lifecycle import CopyDiffers
    from pipelines import deploy

    with monkeypatch.context() as patch:
        if damage == "cut short":
            azure_job.models.after_upload = _cut_short
            expected = pytest.raises(CopyDiffers, match="maap-finetuned in the workspace version 1 differs from the "
                                                        "folder registered")
        else:
            patch.setattr(mlflow.pyfunc, "load_model", _does_not_load)
            expected = pytest.raises(OSError, match="no model could be built")
        with expected:
            run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    assert azure_job.models.get("maap-finetuned", "1").tags["maap_verified"] == "false"
    with pytest.raises(UserError, match=r"maap-finetuned:1 is not verified \(tag maap_verified: false\)"):
        deploy.model_reference(azure_job.client, "maap-finetuned", "1", None)

    # The same pipeline run, retried: the unverified version is not reused; the new one is checked and verified.
    azure_job.models.after_upload = None
    again = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    assert (again["version"], again["created"], again["tags"]["maap_verified"]) == ("2", True, "true")
    assert azure_job.models.get("maap-finetuned", "2").tags["maap_verified"] == "true"
    assert deploy.model_reference(azure_job.client, "maap-finetuned", "2", None)[0] == "azureml:maap-finetuned:2"


def test_another_pipeline_run_on_the_same_weights_and_data_reuses_the_verified_version(
        tmp_path, mlflow_tracking, azure_job, monkeypatch, finetuned_mlflow_model, evaluation_passed):
    first = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    monkeypatch.setenv("AZUREML_ROOT_RUN_ID", "pipeline_job_8")
    rerun = run_register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="rerun")
    assert (rerun["version"], rerun["created"]) == ("1", False)
    assert rerun["tags"]["pipeline_run_id"] == first["tags"]["pipeline_run_id"] == "pipeline_job_7"
    assert len(azure_job.models.payloads) == 1


def test_from_a_job_output_the_stored_output_is_downloaded_and_loaded(tmp_path, mlflow_tracking, azure_job,
                                                                       finetuned_mlflow_model):
    """No upload: the version points at Fine-Tune's job output; the check reads the registry's copy of it."""
    from maap_finetune.registry.lifecycle import load_mlflow_model

    uri = "azureml://jobs/finetune_job_3/outputs/mlflow_model"
    azure_job.models.job_outputs[uri] = finetuned_mlflow_model
    checked = []

    def check(folder):
        checked.append(folder)
        load_mlflow_model(folder)

    info = azure.register_azure(finetuned_mlflow_model, "maap-finetuned", {"pipeline_run_id": "pipeline_job_7"},
                                "tiny", None, check=check, ml_client=azure_job.client, source_uri=uri)
    assert str(azure_job.models.requests[0].path) == uri
    [folder] = checked
    assert folder.name == "mlflow_model" and folder.parent.name == "maap-finetuned"
    assert not folder.is_relative_to(finetuned_mlflow_model) and not folder.exists()  # a scratch copy, removed
    assert (info.version, info.tags["maap_verified"]) == ("1", "true")
    assert info.reason.endswith("from azureml://jobs/finetune_job_3/outputs/mlflow_model (no upload), downloaded back "
                                "and loaded")

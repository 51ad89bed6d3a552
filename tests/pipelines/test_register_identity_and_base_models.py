"""The register node's identity (--register-identity) and Azure ML models as model_path, offline."""

from __future__ import annotations

from unittest import mock

import pytest
import yaml

from pipelines import submit
from pipelines.definition.build import build_pipeline
from pipelines.definition.settings import PipelineSettings
from tests.helpers import assert_one_error

PHI3 = "model_name=microsoft/Phi-3-mini-4k-instruct"
REGISTRY_MODEL = "azureml://registries/azureml/models/Phi-4/versions/8"
WORKSPACE_MODEL = "azureml:my-model:3"
MODEL_STEPS = ("data_prep", "finetune", "evaluate", "register")


@pytest.mark.parametrize(
    ("kind", "entity", "rest_type"),
    [("user", "UserIdentityConfiguration", "UserIdentity"), ("managed", "ManagedIdentityConfiguration", "Managed")],
)
def test_register_node_runs_with_the_chosen_identity(kind, entity, rest_type):
    job = build_pipeline(PipelineSettings(require_training_data=False, compute="gpu-cluster", register_identity=kind, inputs={"model_name": "a/b"}))
    assert type(job.jobs["register"].identity).__name__ == entity
    assert all(job.jobs[step].identity is None for step in ("data_prep", "finetune", "evaluate"))
    rest = job._to_rest_object().as_dict()["properties"]["jobs"]
    assert rest["register"]["identity"] == {"identity_type": rest_type}


def test_user_identity_is_the_default_everywhere(capsys):
    assert PipelineSettings().register_identity == "user"
    assert submit.build_parser().parse_args([]).register_identity == "user"
    assert submit.main(["--dry-run", "--sample-data", "--set", PHI3]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["jobs"]["register"]["identity"] == {"type": "user_identity"}


def test_dry_run_shows_the_managed_identity(capsys):
    assert submit.main(["--dry-run", "--sample-data", "--register-identity", "managed", "--set", PHI3]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["jobs"]["register"]["identity"] == {"type": "managed_identity"}


def test_unknown_identity_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        submit.main(["--dry-run", "--sample-data", "--register-identity", "service-principal"])
    assert exit_.value.code == 2
    assert "invalid choice: 'service-principal'" in capsys.readouterr().err
    from maap_finetune.common.errors import ConfigErrors

    with pytest.raises(ConfigErrors, match="register_identity must be one of user, managed"):
        build_pipeline(PipelineSettings(require_training_data=False, register_identity="sp", inputs={"model_name": "a/b"}))


@pytest.mark.parametrize("model_path", [REGISTRY_MODEL, WORKSPACE_MODEL])
def test_dry_run_takes_azure_ml_models_as_the_base_model(model_path, capsys):
    assert submit.main(["--dry-run", "--sample-data", "--set", f"model_path={model_path}"]) == 0
    pipeline = yaml.safe_load(capsys.readouterr().out)
    assert pipeline["inputs"]["model_path"] == {"type": "custom_model", "path": model_path}
    for step in MODEL_STEPS:
        assert pipeline["jobs"][step]["inputs"]["model_path"] == {"path": "${{parent.inputs.model_path}}"}
        assert pipeline["jobs"][step]["component"]["inputs"]["model_path"]["type"] == "custom_model"
    job = build_pipeline(PipelineSettings(require_training_data=False, compute="gpu-cluster", inputs={"model_path": model_path}))
    rest = job._to_rest_object().as_dict()["properties"]["inputs"]["model_path"]
    assert rest == {"uri": model_path, "jobInputType": "custom_model"}


def test_a_local_folder_is_still_a_base_model(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert submit.main(["--dry-run", "--sample-data", "--set", f"model_path={tmp_path}"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["inputs"]["model_path"] == {"type": "custom_model", "path": str(tmp_path)}
    (tmp_path / "file").write_text("x")
    assert submit.main(["--dry-run", "--sample-data", "--set", f"model_path={tmp_path / 'file'}"]) == 2
    assert "expected a folder (custom_model), got a file" in capsys.readouterr().err


@pytest.mark.parametrize(("kind", "asset"), [("custom_model", "models"), ("mlflow_model", "models"), ("uri_folder", "data")])
def test_sdk_resolves_azureml_name_version_as_a_model_only_for_model_types(kind, asset):
    """What azure-ai-ml does at submission (JobOperations._resolve_job_input): for a model-typed input
    `azureml:name:version` is looked up as a model; for the uri_folder model_path used to be, as data."""
    from azure.ai.ml import Input
    from azure.ai.ml.operations import JobOperations
    from azure.ai.ml.operations._operation_orchestrator import OperationOrchestrator

    operations = mock.NonCallableMock(spec=["_orchestrators"])
    operations._orchestrators = mock.create_autospec(OperationOrchestrator, instance=True)
    operations._orchestrators.get_asset_arm_id.return_value = "/subscriptions/s/.../my-model/versions/3"
    entry = Input(type=kind, path=WORKSPACE_MODEL)
    JobOperations._resolve_job_input(operations, entry, None)
    operations._orchestrators.get_asset_arm_id.assert_called_once_with(WORKSPACE_MODEL, asset)

    registry = Input(type="custom_model", path=REGISTRY_MODEL)
    JobOperations._resolve_job_input(operations, registry, None)  # a URI: passed through untouched
    assert registry.path == REGISTRY_MODEL and operations._orchestrators.get_asset_arm_id.call_count == 1


def test_missing_base_model_hint_names_every_form():
    from maap_finetune.common.errors import ConfigErrors

    with pytest.raises(ConfigErrors) as err:
        build_pipeline(PipelineSettings(require_training_data=False, compute="gpu-cluster"))
    message = str(err.value)
    assert "azureml:<model>:<version> (a workspace model)" in message
    assert "azureml://registries/<registry>/models/<model>/versions/<version> (a registry model)" in message
    assert "azureml:model:version" not in message


def test_two_base_models_name_the_model_path_forms(capsys):
    rc = submit.main(["--dry-run", "--sample-data", "--set", PHI3, "--set", f"model_path={REGISTRY_MODEL}"])
    assert_one_error(capsys, rc, "set one base model, not both", "a folder or Azure ML model")

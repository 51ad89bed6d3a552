"""`submit.py --maas`: Data Prep here, then a serverless fine-tuning job, against autospec'd SDK operations."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest

from pipelines import maas, submit
from tests.azure_fakes import fake_ml_client, rest_entity

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_TOOLS = REPO_ROOT / "data" / "sample" / "tools.jsonl"
GOLDEN = REPO_ROOT / "tests" / "golden" / "maas_job.json"
MODEL = "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"


def _argv(tmp_path, *extra):
    return ["--maas", "--model", MODEL, "--set", f"train_data={SAMPLE_TOOLS}",
            "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", *extra]


@pytest.fixture
def workspace(monkeypatch, tmp_path):
    """Autospec'd DataOperations and JobOperations behind submit.connect; the calls they got."""
    from azure.ai.ml.entities import Data
    from azure.ai.ml.operations import DataOperations, JobOperations

    monkeypatch.chdir(tmp_path)
    data = mock.create_autospec(DataOperations, instance=True)
    data.create_or_update.side_effect = lambda asset: Data(
        name=asset.name, version=asset.version, path=asset.path, type=asset.type,
        id=f"azureml:/subscriptions/sub/resourceGroups/rg/workspaces/ws/data/{asset.name}/versions/{asset.version}")
    jobs = mock.create_autospec(JobOperations, instance=True)
    jobs.create_or_update.return_value = SimpleNamespace(name="calm_fig_7", studio_url="https://ml.azure.com/runs/calm_fig_7")
    client = fake_ml_client()
    client.data, client.jobs, client.workspace_name = data, jobs, "ws-ml"
    client.workspaces.get.return_value = rest_entity("workspace", "workspace_ws-ml")
    client.registries.get.return_value = rest_entity("registry", "registry_azureml")
    client.models.get.return_value = rest_entity("model", "model_azureml_Phi-4-mini-instruct_1")
    connect = mock.Mock(return_value=client)
    monkeypatch.setattr(submit, "connect", connect)
    monkeypatch.setattr("pipelines.registry_models.registry_client", lambda registry: client)
    return SimpleNamespace(client=client, connect=connect)


@pytest.mark.slow
def test_dry_run_prints_the_job_and_touches_no_network(workspace, tmp_path, capfd):
    rc = submit.main(["--dry-run", *_argv(tmp_path, "--set", "epochs=2", "--set", "learning_rate=2e-5")])
    out = capfd.readouterr().out
    assert rc == 0 and not workspace.connect.called
    assert "data prep (chat): 25 rows read, 0 rejected" in out  # the same Data Prep report as the pipeline's
    payload = json.loads(out[out.index("{"):])
    details = payload["properties"]["fineTuningDetails"]
    assert details["taskType"] == "chatCompletion" and details["model"]["uri"] == MODEL
    assert details["hyperParameters"] == {"num_train_epochs": "2", "learning_rate": "2e-05"}
    assert Path(details["trainingData"]["uri"]).name == "train.jsonl"
    assert Path(details["validationData"]["uri"]).is_file()


@pytest.mark.slow
def test_submit_uploads_the_prepared_splits_and_creates_the_job(workspace, tmp_path, capfd):
    rc = submit.main(_argv(tmp_path, "--set", "per_device_train_batch_size=2", "--set", "registered_model_name=bikes-ft"))
    out = capfd.readouterr().out
    assert rc == 0
    uploads = [call.args[0] for call in workspace.client.data.create_or_update.call_args_list]
    assert [(a.name, a.type, Path(a.path).name) for a in uploads] == [
        ("bikes-ft-train", "uri_file", "train.jsonl"), ("bikes-ft-validation", "uri_file", "validation.jsonl")]
    assert all(len(a.version) == 16 for a in uploads)  # versioned by content
    (job,), kwargs = workspace.client.jobs.create_or_update.call_args
    assert kwargs == {"experiment_name": "maap-finetune"}
    assert "studio_url: https://ml.azure.com/runs/calm_fig_7" in out
    payload = json.dumps(maas.rest_payload(job), indent=2, sort_keys=True) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(payload)
    assert GOLDEN.is_file(), "no golden file: run UPDATE_GOLDEN=1 python -m pytest tests/pipelines/test_maas.py"
    assert payload == GOLDEN.read_text(), (
        "the serverless job's REST payload changed; if intended, run UPDATE_GOLDEN=1 python -m pytest "
        "tests/pipelines/test_maas.py and review the diff")


def test_inputs_serverless_fine_tuning_does_not_offer_are_errors_before_anything_runs(workspace, tmp_path, capfd):
    rc = submit.main(["--maas", "--model", "Phi-4-mini-instruct", "--compute", "gpu",
                      "--set", "peft_method=qdora", "--set", "lora_r=8", "--set", "model_name=microsoft/Phi-4",
                      "--set", "finetune.gradient_checkpointing=true", "--set", "epochs=0"])
    err = capfd.readouterr().err
    assert rc == 2 and not workspace.connect.called and not (tmp_path / "runs").exists()
    for fragment in ("--model 'Phi-4-mini-instruct' is not a registry model id",
                     "--compute does not apply to --maas",
                     "--set peft_method: serverless fine-tuning does not offer peft_method",
                     "--set lora_r: serverless fine-tuning does not offer lora_r",
                     "give the base model with --model",
                     "--set finetune.gradient_checkpointing: under --maas only Data Prep runs on your side",
                     "--set epochs must be >= 1"):
        assert fragment in err, fragment
    assert "Traceback" not in err


@pytest.mark.slow
def test_free_text_reaches_data_prep_through_the_components_own_command(workspace, tmp_path, capfd):
    """Data Prep runs as the pipeline's node does: its YAML command rendered and run by bash, so the
    YAML's quoting carries a value with spaces, parentheses, ; and $ through whole."""
    text = "Answer in one line (two at most); never print $HOME"
    rc = submit.main(["--dry-run", *_argv(tmp_path, "--set", f"data_prep.system_prompt={text}")])
    out = capfd.readouterr().out
    assert rc == 0
    (command_file,) = (tmp_path / "runs").glob("maas-*/data_prep/command.json")
    assert f"--system_prompt '{text}'" in json.loads(command_file.read_text())["command"]
    train = Path(json.loads(out[out.index("{"):])["properties"]["fineTuningDetails"]["trainingData"]["uri"])
    rows = [json.loads(line) for line in train.read_text(encoding="utf-8").splitlines()]
    assert any(row["messages"][0] == {"role": "system", "content": text} for row in rows)  # rows that had none


def test_a_value_no_command_line_can_carry_is_refused_as_the_pipeline_refuses_it(workspace, tmp_path, capfd):
    rc = submit.main(["--dry-run", *_argv(tmp_path, "--set", "data_prep.system_prompt=Don't guess")])
    err = capfd.readouterr().err
    assert rc == 2 and not (tmp_path / "runs").exists()
    assert "--set data_prep.system_prompt contains a single quote (')" in err and "templates_file" in err


@pytest.mark.slow
def test_bad_rows_stop_before_any_upload(workspace, tmp_path, capfd):
    bad = tmp_path / "bad.jsonl"
    good = SAMPLE_TOOLS.read_text(encoding="utf-8").splitlines()
    row = json.loads(good[0])
    call = next(m for m in row["messages"] if m.get("tool_calls"))["tool_calls"][0]
    call["function"]["arguments"] = {"model": "City Glide"}  # an object, not a string
    bad.write_text("\n".join([*good[1:], json.dumps(row)]) + "\n", encoding="utf-8")
    rc = submit.main(["--maas", "--model", MODEL, "--set", f"train_data={bad}",
                      "--tracking-uri", f"sqlite:///{tmp_path / 'mlruns.db'}"])
    out, err = capfd.readouterr()
    assert rc == 2 and not workspace.client.data.create_or_update.called and not workspace.client.jobs.create_or_update.called
    assert "Data Prep stopped" in err and "nothing was uploaded or submitted" in err
    assert "arguments" in out  # Data Prep's own report of the bad row, echoed from its log


@pytest.mark.slow
def test_no_training_data_is_refused_and_the_default_store_is_in_the_working_folder(workspace, tmp_path, capfd,
                                                                                   monkeypatch):
    """As for a pipeline submission: the bundled sample only on purpose. The default MLflow store is the
    working folder's mlruns.db (Data Prep runs in its component folder, which must stay clean)."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a store named in the environment would win
    rc = submit.main(["--maas", "--dry-run", "--model", MODEL])
    err = capfd.readouterr().err
    assert rc == 2 and "set the training data" in err and "--sample-data" in err
    component_store = REPO_ROOT / "components" / "data_prep" / "mlruns.db"
    existed = component_store.exists()
    assert submit.main(["--maas", "--dry-run", "--model", MODEL, "--sample-data"]) == 0
    assert "data prep (chat)" in capfd.readouterr().out
    assert (tmp_path / "mlruns.db").is_file()  # workspace fixture: the working folder is tmp_path
    assert component_store.exists() == existed


def test_a_missing_local_file_is_refused_before_data_prep_runs(workspace, tmp_path, capfd):
    rc = submit.main(["--dry-run", "--maas", "--model", MODEL, "--set", f"train_data={tmp_path / 'nope.jsonl'}",
                      "--set", f"data_prep.validation_data={tmp_path}"])
    err = capfd.readouterr().err
    assert rc == 2 and not (tmp_path / "runs").exists() and not workspace.connect.called
    assert f"--set train_data: local path does not exist: {tmp_path / 'nope.jsonl'}" in err
    assert f"--set data_prep.validation_data: expected a file (uri_file), got a folder: {tmp_path}" in err

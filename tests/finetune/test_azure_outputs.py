"""Fine-Tune's outputs inside Azure ML: the model moves once (only small files go to the MLflow run,
the MLmodel names the job output Register creates the model from) and the mount point stays."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from maap_finetune.registry import target
from maap_finetune.training.outputs import AZURE_RUN_ARTIFACTS, MLFLOW_MODEL_OUTPUT
from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry

AZURE_ENV = {
    "AZUREML_RUN_ID": "finetune_step_5",
    "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
    "AZUREML_ARM_RESOURCEGROUP": "rg-ml",
    "AZUREML_ARM_WORKSPACE_NAME": "ws-ml",
}


def _artifacts(client, run_id, path=None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def test_output_name_is_the_components(tmp_path):
    spec = yaml.safe_load((Path(__file__).resolve().parents[2] / "components" / "finetune" / "spec.yaml").read_text())
    assert MLFLOW_MODEL_OUTPUT in spec["outputs"] and spec["outputs"][MLFLOW_MODEL_OUTPUT]["type"] == "mlflow_model"
    assert {folder for folder, _ in AZURE_RUN_ARTIFACTS} <= set(spec["outputs"])


def test_in_azure_only_small_artifacts_are_logged_and_the_mlmodel_names_its_output(
    tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking, monkeypatch
):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("azure-outputs")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    for key, value in AZURE_ENV.items():
        monkeypatch.setenv(key, value)
    assert target.running_in_azure_ml()

    load_entry("finetune").main(
        argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_steps=1, **outputs(tmp_path))
    )
    # The run gets only small files: the summary, the loss curve, the MLmodel and the resolved plan.
    assert _artifacts(client, run_id) == {"adapter/training_summary.json", "adapter/loss_curve.png", "mlflow_model/MLmodel", "plan.json"}
    weights = [p for p in (tmp_path / "mlflow_model").rglob("*.safetensors")]
    assert weights and all(p.stat().st_size > 0 for p in weights)  # the output itself holds the model
    metadata = yaml.safe_load((tmp_path / "mlflow_model" / "MLmodel").read_text())["metadata"]
    assert target.job_output_uri(metadata) == "azureml://jobs/finetune_step_5/outputs/mlflow_model"


def test_save_mlflow_model_writes_into_an_existing_empty_folder(tmp_path, tiny_model_dir):
    """An Azure ML output is a mount point: it exists, is empty and cannot be removed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.mlflow_model import save_mlflow_model

    mount = tmp_path / "mnt" / "mlflow_model"
    mount.mkdir(parents=True)
    inode = mount.stat().st_ino
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    read_only_parent = os.geteuid() != 0  # root may remove it anyway; the inode check holds for both
    if read_only_parent:
        (tmp_path / "mnt").chmod(0o555)  # like a mount point: the folder cannot be removed or recreated
    try:
        save_mlflow_model(model, tokenizer, mount)
    finally:
        (tmp_path / "mnt").chmod(0o755)
    assert mount.stat().st_ino == inode
    assert (mount / "MLmodel").is_file() and (mount / "components" / "tokenizer").is_dir()
    with pytest.raises(FileExistsError, match="is not empty"):
        save_mlflow_model(model, tokenizer, mount)

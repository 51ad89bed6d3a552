"""submit.py's capacity check: the table, the refusal before anything is uploaded, --force, unknown VM sizes, and
the base model's size from a folder, an Azure ML model (the autospecced MLClient) or the Hub (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import submit
from tests.azure_fakes import ModelStore, from_rest, resource_id, rest_payload
from tests.helpers import assert_one_error
from tests.pipelines.test_submit import azure  # noqa: F401 (the fixture: gpu-cluster A100, cpu-cluster DS3_v2)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PHI3_MINI = json.loads((FIXTURES / "phi3-mini-4k-config.json").read_text())
CLUSTERS = ["--compute", "gpu-cluster", "--cpu-compute", "cpu-cluster", "--sample-data"]
WEIGHTS_BYTES = 2 * 3_821_079_552  # Phi-3-mini's bf16 weights, as Register tags model_size_bytes


def export_needs() -> str:
    """Export ONNX's predicted memory for Phi-3-mini, as the refusal prints it (from the committed step costs)."""
    from maap_finetune.capacity.check import load_step_costs

    return f"needs about {load_step_costs().steps['export_onnx'].memory.at(3_821_079_552) / 1e9:.1f} GB"


@pytest.fixture
def phi3_mini(tmp_path) -> Path:
    """A folder with Phi-3-mini's config.json and nothing else: no weights, no tokenizer."""
    folder = tmp_path / "phi3-mini"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(PHI3_MINI))
    return folder


def resize(azure, cluster: str, vm_size: str) -> None:
    payload = rest_payload(f"compute_{cluster}")
    payload["properties"]["properties"]["vmSize"] = vm_size
    azure.computes[cluster] = from_rest("compute", payload)


def add_sized_model(azure, name: str) -> None:
    azure.models = ModelStore(azure.client.models)
    payload = rest_payload("model_maap-finetuned_1")
    payload["id"] = resource_id("models", name, "1")
    payload["properties"]["tags"] = {"model_size_bytes": str(WEIGHTS_BYTES)}
    azure.models.payloads.append(payload)


def test_dry_run_prints_the_table_and_the_default_clusters_hold_phi3_mini(phi3_mini, capsys):
    assert submit.main(["--dry-run", "--sample-data", "--set", f"model_path={phi3_mini}"]) == 0
    captured = capsys.readouterr()
    assert "jobs:" in captured.out  # the pipeline YAML, as before
    err = captured.err
    assert "base model: 3.82 B parameters, from config.json (phi3 shapes)" in err
    assert "infra/main.bicep defaults" in err
    lines = err.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["step", "compute"])
    rows = {line.split()[0]: line for line in lines[header + 1:header + 6]}
    assert set(rows) == {"data_prep", "finetune", "evaluate", "register", "export_onnx"}
    assert "cpu-cluster  Standard_E8ds_v5" in rows["export_onnx"] and rows["export_onnx"].endswith("fits")
    assert "gpu-cluster  Standard_NC24ads_A100_v4" in rows["finetune"] and rows["finetune"].endswith("fits")


def test_dry_run_refuses_a_step_the_default_cluster_cannot_hold(tmp_path, capsys):
    medium = tmp_path / "medium"  # Phi-3-medium's shapes (14 B parameters)
    medium.mkdir()
    (medium / "config.json").write_text(json.dumps({**PHI3_MINI, "hidden_size": 5120, "num_hidden_layers": 40,
                                                    "num_attention_heads": 40, "num_key_value_heads": 10,
                                                    "intermediate_size": 17920, "vocab_size": 32064}))
    rc = submit.main(["--dry-run", "--sample-data", "--set", f"model_path={medium}"])
    captured = assert_one_error(capsys, rc, "the capacity check refused the pipeline", "export_onnx on cpu-cluster "
                                "(Standard_E8ds_v5) needs about", "--cpu-compute cluster of a size that fits, such as",
                                "--set export_onnx=false", "--force submits anyway")
    assert "too small (memory)" in captured.err
    rc = submit.main(["--dry-run", "--sample-data", "--force", "--set", f"model_path={medium}"])
    assert rc == 0 and "warning: --force: export_onnx on cpu-cluster" in capsys.readouterr().err


def test_submit_refuses_phi3_mini_on_a_ds3_v2_before_uploading_and_names_the_fix(azure, phi3_mini, capsys):
    rc = submit.main([*CLUSTERS, "--set", f"model_path={phi3_mini}"])
    captured = assert_one_error(capsys, rc, f"export_onnx on cpu-cluster (Standard_DS3_v2) {export_needs()} of "
                                "memory (above 85% of its 15.0 GB)", "such as Standard_E4ds_v5 (32 GiB memory",
                                "run the CPU steps on the GPU cluster (gpu-cluster, Standard_NC24ads_A100_v4",
                                "--set export_onnx=false")
    assert "export_onnx  cpu-cluster  Standard_DS3_v2" in captured.out  # the table, sizes from the workspace
    azure.client.jobs.create_or_update.assert_not_called()


def test_submit_accepts_a_cluster_that_fits(azure, phi3_mini, capsys):
    resize(azure, "cpu-cluster", "STANDARD_E8DS_V5")  # Azure answers sizes in capitals
    assert submit.main([*CLUSTERS, "--set", f"model_path={phi3_mini}"]) == 0
    out = capsys.readouterr().out
    assert "export_onnx  cpu-cluster  Standard_E8ds_v5" in out and "too small" not in out
    azure.client.jobs.create_or_update.assert_called_once()


def test_an_unknown_vm_size_is_a_warning_and_force_submits_anyway(azure, phi3_mini, capsys):
    resize(azure, "cpu-cluster", "STANDARD_Q4_V9")
    assert submit.main([*CLUSTERS, "--set", f"model_path={phi3_mini}"]) == 0
    out = capsys.readouterr().out
    assert "warning: export_onnx: VM size STANDARD_Q4_V9 of cpu-cluster is not in" in out
    assert "unknown VM size" in out
    resize(azure, "cpu-cluster", "STANDARD_DS3_V2")
    assert submit.main([*CLUSTERS, "--force", "--set", f"model_path={phi3_mini}"]) == 0
    assert "warning: --force: export_onnx on cpu-cluster (Standard_DS3_v2)" in capsys.readouterr().out
    assert azure.client.jobs.create_or_update.call_count == 2


@pytest.mark.parametrize("model_path", ["azureml:sized:1", "azureml://registries/shared/models/sized/versions/1"])
def test_workspace_and_registry_models_are_sized_from_their_tags(azure, model_path, capsys):
    add_sized_model(azure, "sized")  # the registry client is the same fake (patch_azure answers every MLClient)
    rc = submit.main([*CLUSTERS, "--set", f"model_path={model_path}"])
    captured = assert_one_error(capsys, rc, f"export_onnx on cpu-cluster (Standard_DS3_v2) {export_needs()}")
    assert f"3.82 B parameters, from {model_path} tag model_size_bytes" in captured.out
    get = azure.client.models.get.call_args  # by the registry-model check, or by the capacity check
    assert azure.models.payloads and (get.args[:1] or (get.kwargs.get("name"),)) == ("sized",)
    assert get.kwargs.get("version") == "1"
    azure.client.jobs.create_or_update.assert_not_called()


def test_a_hub_model_is_read_from_the_local_cache_in_a_dry_run(monkeypatch, tmp_path, capsys):
    rc = submit.main(["--dry-run", "--sample-data", "--set", "model_name=maap-tests/never-downloaded"])
    err = capsys.readouterr().err
    assert rc == 0 and "maap-tests/never-downloaded: config.json not in the local Hugging Face cache" in err
    assert "warning: the base model's size is unknown" in err

    cached = tmp_path / "config.json"
    cached.write_text(json.dumps(PHI3_MINI))
    asked = []
    monkeypatch.setattr("huggingface_hub.hf_hub_download",
                        lambda repo_id, filename, local_files_only: asked.append(local_files_only) or str(cached))
    assert submit.main(["--dry-run", "--sample-data", "--set", "model_name=microsoft/Phi-3-mini-4k-instruct"]) == 0
    assert asked == [True]  # a dry run touches no network
    err = capsys.readouterr().err
    assert "3.82 B parameters, from microsoft/Phi-3-mini-4k-instruct config.json (phi3 shapes)" in err


def test_validate_lists_a_step_that_does_not_fit(monkeypatch, phi3_mini, capsys):
    monkeypatch.setattr("pipelines.capacity.bicep_defaults", lambda: {
        "gpuClusterName": "gpu-cluster", "cpuClusterName": "cpu-cluster", "gpuVmSize": "Standard_NC24ads_A100_v4",
        "cpuVmSize": "Standard_DS3_v2"})
    monkeypatch.setattr("pipelines.definition.lint.lint_repo", lambda settings: [])
    assert submit.main(["--validate", "--set", f"model_path={phi3_mini}"]) == 1
    err = capsys.readouterr().err
    assert "1 problem:" in err and f"export_onnx on cpu-cluster (Standard_DS3_v2) {export_needs()}" in err

"""Bicep parameters, the compute YAMLs and the security requirements agree (offline)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
INFRA = REPO_ROOT / "infra"


def bicep_params() -> dict[str, str]:
    """param name -> its default expression (or '' when none), from main.bicep."""
    text = (INFRA / "main.bicep").read_text()
    return {m.group(1): (m.group(3) or "").strip() for m in re.finditer(r"^param (\w+) (\w+)(?: = (.+))?$", text, re.M)}


def parameters_file() -> dict:
    data = json.loads((INFRA / "main.parameters.json").read_text())
    return {name: entry["value"] for name, entry in data["parameters"].items()}


def test_parameters_file_sets_only_declared_parameters():
    declared = bicep_params()
    values = parameters_file()
    assert set(values) <= set(declared), set(values) - set(declared)
    assert values["vmPriority"] in ("Dedicated", "LowPriority")


def test_bicep_declares_every_resource_the_workspace_needs():
    text = (INFRA / "main.bicep").read_text()
    for resource_type in (
        "Microsoft.Storage/storageAccounts",
        "Microsoft.KeyVault/vaults",
        "Microsoft.ContainerRegistry/registries",
        "Microsoft.Insights/components",
        "Microsoft.MachineLearningServices/workspaces@",
        "Microsoft.MachineLearningServices/workspaces/computes",
    ):
        assert f"'{resource_type}" in text, resource_type
    assert text.count("computeType: 'AmlCompute'") == 2
    assert text.count("minNodeCount: 0") == 2
    assert text.count("nodeIdleTimeBeforeScaleDown: idleTime") == 2
    assert "vmPriority: vmPriority" in text and "'LowPriority'" in text


@pytest.mark.parametrize("kind", ["gpu", "cpu"])
def test_compute_yaml_loads_and_matches_bicep_parameters(kind):
    from azure.ai.ml import load_compute
    from azure.ai.ml.entities import AmlCompute

    compute = load_compute(INFRA / "compute" / f"{kind}-cluster.yaml")
    params = parameters_file()
    assert isinstance(compute, AmlCompute)
    assert compute.name == params[f"{kind}ClusterName"]
    assert compute.size == params[f"{kind}VmSize"]
    assert compute.max_instances == params[f"{kind}MaxNodes"]
    assert compute.idle_time_before_scale_down == params["idleSecondsBeforeScaleDown"]
    assert compute.tier == {"Dedicated": "dedicated", "LowPriority": "low_priority"}[params["vmPriority"]]
    assert compute.min_instances == 0
    assert compute.ssh_public_access_enabled is False
    assert compute.identity is not None and compute.identity.type == "system_assigned"


def test_compute_yaml_names_match_bicep_defaults():
    declared = bicep_params()
    assert declared["gpuClusterName"] == "'gpu-cluster'"
    assert declared["cpuClusterName"] == "'cpu-cluster'"


def test_readme_gives_the_deployment_command():
    readme = (INFRA / "README.md").read_text()
    assert "az deployment group create" in readme
    assert "--template-file infra/main.bicep" in readme
    assert "--parameters @infra/main.parameters.json" in readme
    assert "python infra/provision.py" in readme
    assert "az ml compute create --file infra/compute/gpu-cluster.yaml" in readme

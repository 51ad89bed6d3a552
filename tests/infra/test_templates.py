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


def _role_assignments(text: str) -> dict[str, str]:
    """role assignment resource name -> its body, from main.bicep."""
    blocks = re.split(r"^resource ", text, flags=re.M)[1:]
    return {b.split()[0]: b for b in blocks if "'Microsoft.Authorization/roleAssignments@" in b.split("\n", 1)[0]}


def test_key_vault_uses_rbac_and_the_workspace_identity_has_a_role():
    text = (INFRA / "main.bicep").read_text()
    assert "enableRbacAuthorization: true" in text and "accessPolicies" not in text
    assignments = _role_assignments(text)
    body = assignments["workspaceKeyVaultAdmin"]
    assert "scope: keyVault" in body and "principalId: workspace.identity.principalId" in body
    assert "roles.keyVaultAdministrator" in body


def test_cluster_identities_get_the_roles_managed_identity_registration_needs():
    text = (INFRA / "main.bicep").read_text()
    ids = dict(re.findall(r"^  (\w+): '([0-9a-f-]{36})'$", text, re.M))
    # Built-in role definition ids (Microsoft Learn, "Azure built-in roles").
    assert ids == {"azureMLDataScientist": "f6c7c914-8db3-469d-8ca1-694a8f32e121",
                   "azureMLRegistryUser": "1823dd4f-9b8c-4ab6-ab4e-7397a3684615",
                   "keyVaultAdministrator": "00482a5a-887f-4fb3-b363-3b7fe8e74483",
                   "storageBlobDataReader": "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"}
    assignments = _role_assignments(text)
    for name, scope, role in (("clusterDataScientist", "workspace", "azureMLDataScientist"),
                              ("clusterBlobReader", "storage", "storageBlobDataReader"),
                              ("clusterRegistryUser", "modelRegistry", "azureMLRegistryUser")):
        body = assignments[name]
        assert f"scope: {scope}\n" in body and f"roles.{role})" in body, name
        assert "gpuCluster.identity.principalId" in body and "cpuCluster.identity.principalId" in body, name
    assert "if (!empty(modelRegistryName))" in assignments["clusterRegistryUser"]
    readme = (INFRA / "README.md").read_text()
    for role in ("AzureML Data Scientist", "Storage Blob Data Reader", "AzureML Registry User", "Key Vault Administrator"):
        assert role in readme, role
    assert "keyVaultNameSuffix" in readme

"""infra/provision.py against the fake workspace of tests/azure_fakes.py
(an autospecced MLClient; computes kept as REST payloads)."""

from __future__ import annotations

import copy

import pytest

from tests.azure_fakes import from_rest, patch_azure, poller, request_payload, resource_id, rest_payload, system_data
from tests.helpers import REPO_ROOT, assert_one_error, load_script


provision = load_script("maap_infra_provision", REPO_ROOT / "infra" / "provision.py")
WORKSPACE_FLAGS = ["--subscription", "sub-1", "--resource-group", "rg-1", "--workspace", "ws-1"]


class Computes:
    """`client.compute` as the service keeps it: REST payloads by name, read back via `_from_rest_object`."""

    def __init__(self, operations):
        self.payloads: dict[str, dict] = {}
        self.creates = 0
        self.updates = 0
        operations.get.side_effect = self.get
        operations.begin_create_or_update.side_effect = self.begin_create_or_update
        operations.begin_update.side_effect = self.begin_update

    @property
    def store(self) -> dict:
        """The workspace's clusters as the SDK reads them."""
        return {name: self.get(name) for name in self.payloads}

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.payloads:
            raise ResourceNotFoundError(f"Compute {name} not found")
        return from_rest("compute", self.payloads[name])

    def put(self, compute):
        body = request_payload(compute)
        body.update(id=resource_id("computes", compute.name), name=compute.name, location="eastus",
                    type="Microsoft.MachineLearningServices/workspaces/computes", systemData=system_data())
        body["properties"].update(provisioningState="Succeeded", computeLocation="eastus")
        inner = body["properties"]["properties"]
        inner["vmSize"] = inner["vmSize"].upper()  # the service answers STANDARD_NC24ADS_A100_V4
        self.payloads[compute.name] = body
        return poller(from_rest("compute", body))

    def begin_create_or_update(self, compute):
        self.creates += 1
        return self.put(compute)

    def begin_update(self, compute):
        self.updates += 1
        return self.put(compute)


@pytest.fixture
def workspace(monkeypatch):
    """An autospecced MLClient (tests/azure_fakes.py) over a workspace with no compute."""
    fake = patch_azure(monkeypatch)
    fake.computes = Computes(fake.client.compute)
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME",
                "AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(var, raising=False)
    return fake


def test_creates_both_clusters_as_defined_in_the_yaml(workspace, capsys):
    assert provision.main(WORKSPACE_FLAGS) == 0
    store = workspace.computes.store
    assert sorted(store) == ["cpu-cluster", "gpu-cluster"]
    gpu = store["gpu-cluster"]
    assert gpu.size.lower() == "standard_nc24ads_a100_v4" and gpu.min_instances == 0  # Azure answers in capitals and gpu.max_instances == 2
    assert gpu.ssh_public_access_enabled is False and gpu.identity.type == "system_assigned"
    assert gpu.idle_time_before_scale_down == 1800 and gpu.tier == "dedicated"
    assert workspace.cls.call_args.kwargs == {"subscription_id": "sub-1", "resource_group_name": "rg-1", "workspace_name": "ws-1"}
    out = capsys.readouterr().out
    assert "gpu-cluster: created" in out and "cpu-cluster: created" in out


def test_second_run_changes_nothing(workspace, capsys):
    assert provision.main(WORKSPACE_FLAGS) == 0
    before = copy.deepcopy(workspace.computes.payloads)
    capsys.readouterr()
    assert provision.main(WORKSPACE_FLAGS) == 0
    assert workspace.computes.creates == 2 and workspace.computes.updates == 0
    assert workspace.computes.payloads == before
    out = capsys.readouterr().out
    assert "gpu-cluster: unchanged" in out and "cpu-cluster: unchanged" in out


def test_scale_settings_are_updated_in_place(workspace, capsys):
    provision.main(WORKSPACE_FLAGS)
    capsys.readouterr()
    assert provision.main([*WORKSPACE_FLAGS, "--gpu-max-instances", "4", "--idle-seconds", "600"]) == 0
    gpu = workspace.computes.store["gpu-cluster"]
    assert gpu.max_instances == 4 and gpu.idle_time_before_scale_down == 600
    assert workspace.computes.updates == 2  # both clusters take the idle time
    out = capsys.readouterr().out
    assert "gpu-cluster: updated (max_instances 2 -> 4, idle_time_before_scale_down 1800 -> 600)" in out


def test_low_priority_tier_and_only_one_cluster(workspace):
    assert provision.main([*WORKSPACE_FLAGS, "--only", "gpu", "--tier", "low_priority"]) == 0
    assert list(workspace.computes.store) == ["gpu-cluster"]
    assert workspace.computes.store["gpu-cluster"].tier == "low_priority"


def test_size_change_on_existing_cluster_is_refused_without_changes(workspace, capsys):
    provision.main(WORKSPACE_FLAGS)
    capsys.readouterr()
    rc = provision.main([*WORKSPACE_FLAGS, "--gpu-size", "Standard_NC40ads_H100_v5", "--gpu-max-instances", "8"])
    assert_one_error(capsys, rc, "'gpu-cluster'", "size is standard_nc24ads_a100_v4, wanted standard_nc40ads_h100_v5", "az ml compute delete", on_error_line=True)
    assert workspace.computes.store["gpu-cluster"].max_instances == 2
    assert workspace.computes.updates == 0


def test_name_taken_by_a_compute_instance_is_refused(workspace, capsys):
    instance = rest_payload("compute_my-ci")  # a recorded compute instance, under the cluster's name
    instance.update(id=resource_id("computes", "gpu-cluster"), name="gpu-cluster")
    workspace.computes.payloads["gpu-cluster"] = instance
    rc = provision.main([*WORKSPACE_FLAGS, "--only", "gpu"])
    assert_one_error(capsys, rc, "'gpu-cluster' already exists", "computeinstance", "--gpu-name", on_error_line=True)


def test_dry_run_changes_nothing(workspace, capsys):
    assert provision.main([*WORKSPACE_FLAGS, "--dry-run"]) == 0
    assert workspace.computes.payloads == {} and workspace.computes.creates == 0
    out = capsys.readouterr().out
    assert "gpu-cluster: would create (Standard_NC24ads_A100_v4, dedicated, 0-2 nodes" in out


def test_authentication_failure_is_one_clear_message(workspace, capsys):
    from azure.core.exceptions import ClientAuthenticationError

    def refuse(name):
        raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token\nlong details")

    workspace.client.compute.get.side_effect = refuse
    rc = provision.main(WORKSPACE_FLAGS)
    assert_one_error(capsys, rc, "could not authenticate to Azure", "az login", "gpu-cluster", on_error_line=True)


def test_no_workspace_configured_is_one_clear_message(workspace, capsys, tmp_path):
    from azure.ai.ml.exceptions import ValidationException

    workspace.cls.from_config.side_effect = ValidationException(
        message="No config.json", no_personal_data_message="No config.json"
    )
    rc = provision.main(["--config", str(tmp_path / "config.json")])
    assert_one_error(capsys, rc, "no Azure ML workspace configured", "config.json", on_error_line=True)


def test_bad_flag_value_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        provision.main(["--gpu-max-instances", "0"])
    assert exc.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err

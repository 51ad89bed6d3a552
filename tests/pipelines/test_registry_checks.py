"""At submit, before anything is uploaded: a registry model's regions against the workspace's, its retirement
dates, and (for --maas) the serverless table's regions and the marketplace subscription a partner's model needs.
Azure answers from the REST fixtures (tests/fixtures/azure_rest/) through the SDK's own conversion."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from maap_finetune.common.errors import UserError
from pipelines import azure_ml, maas_workspace, submit
from tests.azure_fakes import patch_azure, poller, rest_entity

PHI3_V15 = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/15"
PHI4 = "azureml://registries/azureml/models/Phi-4-mini-instruct/versions/1"
LLAMA = "azureml://registries/azureml-meta/models/Meta-Llama-3.1-8B-Instruct/versions/4"
MODELS = {"Phi-3-mini-4k-instruct": "model_azureml_Phi-3-mini-4k-instruct_15",
          "Phi-4-mini-instruct": "model_azureml_Phi-4-mini-instruct_1",
          "Meta-Llama-3.1-8B-Instruct": "model_azureml-meta_Meta-Llama-3.1-8B-Instruct_4"}


@pytest.fixture
def azure(monkeypatch, tmp_path):
    """One fake MLClient for the workspace and the registries (patch_azure returns it for every scope)."""
    from azure.core.exceptions import ResourceNotFoundError

    monkeypatch.chdir(tmp_path)
    fake = patch_azure(monkeypatch)
    client = fake.client
    state = SimpleNamespace(location="eastus2", client=client, subscriptions={})
    client.workspace_name = "ws-ml"
    client.workspaces.get.side_effect = lambda name=None: rest_entity("workspace", "workspace_ws-ml",
                                                                      location=state.location)
    client.registries.get.side_effect = lambda name=None: rest_entity("registry", "registry_azureml", name=name)
    client.models.get.side_effect = lambda name, version=None, label=None: rest_entity("model", MODELS[name])

    def get_subscription(name):
        if name not in state.subscriptions:
            raise ResourceNotFoundError(f"MarketplaceSubscription {name} not found")
        return state.subscriptions[name]

    def create_subscription(subscription):
        created = rest_entity("marketplace_subscription", "marketplace_subscription_Meta-Llama-3-1-8B-Instruct-sub")
        state.subscriptions[subscription.name] = created
        return poller(created)

    client.marketplace_subscriptions.get.side_effect = get_subscription
    client.marketplace_subscriptions.begin_create_or_update.side_effect = create_subscription
    client.compute.get.side_effect = lambda name: rest_entity("compute", f"compute_{name}")
    client.jobs.create_or_update.return_value = rest_entity("job", "job_pipeline_created")
    for variables in azure_ml.WORKSPACE_ENV.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)
    return state


def submit_pipeline(model_path):
    return submit.main(["--compute", "gpu-cluster", "--sample-data", "--set", f"model_path={model_path}"])


def test_a_registry_not_replicated_to_the_workspace_region_is_refused_before_upload(azure, capfd):
    azure.location = "westeurope"
    rc = submit_pipeline(PHI4)
    err = capfd.readouterr().err
    assert rc == 2 and not azure.client.jobs.create_or_update.called
    assert "registry azureml is replicated to eastus, eastus2, westus3, swedencentral, not to the workspace's " \
           "region westeurope" in err and "Nothing was uploaded or submitted" in err


def test_a_retired_registry_model_is_submitted_with_a_warning_naming_its_dates(azure, capfd):
    rc = submit_pipeline(PHI3_V15)
    out = capfd.readouterr().out
    assert rc == 0 and azure.client.jobs.create_or_update.called
    assert "warning: Phi-3-mini-4k-instruct version 15: fine-tuning retirement since 2025-08-30 " \
           "(FinetuneRetirementDate tag)" in out
    assert "inference retirement since 2025-08-30" in out and "az ml model list --registry-name azureml" in out


def test_a_current_registry_model_gets_no_warning(azure, capfd):
    assert submit_pipeline(PHI4) == 0
    warnings = [line for line in capfd.readouterr().out.splitlines() if line.startswith("warning:")]
    # the capacity check may say the size is unknown (no model_size_bytes tag); nothing names a date
    assert not [line for line in warnings if "retirement" in line or "deprecat" in line], warnings
    azure.client.models.get.assert_called_once_with("Phi-4-mini-instruct", version="1")


def test_maas_refuses_a_region_the_serverless_table_does_not_list_before_data_prep(azure, capfd, tmp_path):
    rc = submit.main(["--maas", "--model", LLAMA, "--sample-data"])
    err = capfd.readouterr().err
    assert rc == 2 and not (tmp_path / "runs").exists()
    assert "serverless fine-tuning runs Llama 3.1 8B Instruct in West US 3, not in this workspace's region eastus2" in err
    assert not azure.client.data.create_or_update.called and not azure.client.marketplace_subscriptions.method_calls


def test_a_partners_model_gets_its_marketplace_subscription_as_the_notebook_creates_it(azure, capfd):
    azure.location = "westus3"
    model = maas_workspace.check_workspace(azure.client, LLAMA)
    assert model.name == "Meta-Llama-3.1-8B-Instruct"
    (subscription,), _ = azure.client.marketplace_subscriptions.begin_create_or_update.call_args
    assert subscription.name == "Meta-Llama-3-1-8B-Instruct-sub"
    assert subscription.model_id == "azureml://registries/azureml-meta/models/Meta-Llama-3.1-8B-Instruct"
    assert "marketplace subscription Meta-Llama-3-1-8B-Instruct-sub: subscribed (created for" in capfd.readouterr().out
    maas_workspace.check_workspace(azure.client, LLAMA)  # the second time it is there already
    assert azure.client.marketplace_subscriptions.begin_create_or_update.call_count == 1


def test_a_refused_subscription_names_who_can_create_it_and_how(azure):
    from azure.core.exceptions import HttpResponseError

    azure.location = "westus3"
    refused = HttpResponseError(message="The client does not have authorization to perform action\nmore")
    refused.status_code = 403
    azure.client.marketplace_subscriptions.begin_create_or_update.side_effect = refused
    with pytest.raises(UserError) as err:
        maas_workspace.check_workspace(azure.client, LLAMA)
    message = str(err.value)
    assert "creating subscription Meta-Llama-3-1-8B-Instruct-sub was refused (HTTP 403)" in message
    assert "Owner or Contributor" in message and "marketplace_subscriptions.begin_create_or_update(" in message
    assert "more" not in message.split("(HTTP 403):")[1].split(".")[0]


def test_microsofts_models_need_no_subscription_and_unlisted_ones_go_to_the_service(azure):
    maas_workspace.check_workspace(azure.client, PHI4)
    azure.client.models.get.side_effect = lambda name, version=None, label=None: rest_entity(
        "model", MODELS["Meta-Llama-3.1-8B-Instruct"],
        id="azureml://registries/azureml-meta/models/Meta-Llama-3-8B/versions/8")
    # No row in the table: the service answers itself (its recorded answer for this model in westus was HTTP 400
    # ModelNotSupportedByMaaS, which azure_ml.azure_errors passes on as it is).
    azure.location = "eastus"
    maas_workspace.check_workspace(azure.client, "azureml://registries/azureml-meta/models/Meta-Llama-3-8B/versions/8")
    assert not azure.client.marketplace_subscriptions.method_calls

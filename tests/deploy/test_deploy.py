"""pipelines/deploy.py against the autospecced MLClient of tests/azure_fakes.py: endpoint, deployment,
traffic, errors in one line."""

from __future__ import annotations

import json

import pytest

from pipelines import deploy
from tests.azure_fakes import (
    ModelStore,
    from_rest,
    patch_azure,
    poller,
    request_payload,
    resource_id,
    rest_payload,
    system_data,
)

WORKSPACE = ["--subscription", "sub-1", "--resource-group", "rg-1", "--workspace", "ws-1"]


class Endpoints:
    """`client.online_endpoints` as the service keeps them: REST payloads in, `_from_rest_object` out."""

    def __init__(self, operations, *fixtures: str):
        self.payloads = {payload["name"]: payload for payload in map(rest_payload, fixtures)}
        self.writes: list[dict] = []  # a summary of each PUT request body
        operations.get.side_effect = self.get
        operations.begin_create_or_update.side_effect = self.begin_create_or_update

    def get(self, name, *, local=False):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.payloads:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return from_rest("online_endpoint", self.payloads[name])

    def begin_create_or_update(self, endpoint, *, local=False):
        body = request_payload(endpoint)
        self.writes.append({"name": endpoint.name, "traffic": body["properties"].get("traffic", {}),
                            "auth_mode": body["properties"]["authMode"]})
        # The service fills in the read-only fields, the scoring URI among them.
        body.update(id=resource_id("onlineEndpoints", endpoint.name), name=endpoint.name, kind="Managed",
                    type="Microsoft.MachineLearningServices/workspaces/onlineEndpoints", systemData=system_data())
        host = f"https://{endpoint.name}.eastus.inference.ml.azure.com"
        body["properties"].update(scoringUri=f"{host}/score", swaggerUri=f"{host}/swagger.json",
                                  provisioningState="Succeeded")
        self.payloads[endpoint.name] = body
        return poller(from_rest("online_endpoint", body))


class Deployments:
    """`client.online_deployments`: keeps what was sent; the SDK's own conversion validates it."""

    def __init__(self, operations):
        self.written = []
        operations.begin_create_or_update.side_effect = self.begin_create_or_update

    def begin_create_or_update(self, deployment, **options):
        body = request_payload(deployment)
        self.written.append(deployment)
        body.update(id=resource_id("onlineEndpoints", f"{deployment.endpoint_name}/deployments/{deployment.name}"),
                    name=deployment.name, systemData=system_data())
        body["properties"].update(provisioningState="Succeeded", scaleSettings={"scaleType": "Default"})
        return poller(from_rest("online_deployment", body))


@pytest.fixture
def azure(monkeypatch):
    """A workspace with maap-finetuned:1 (mlflow) and other:1 (custom) registered and the endpoint
    contoso-chat; an autospecced MLClient (tests/azure_fakes.py) patched in."""
    fake = patch_azure(monkeypatch)
    fake.endpoints = Endpoints(fake.client.online_endpoints, "online_endpoint_contoso-chat")
    fake.deployments = Deployments(fake.client.online_deployments)
    fake.models = ModelStore(fake.client.models, "model_maap-finetuned_1", "model_other_1")
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME",
                "AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(var, raising=False)
    return fake


def test_creates_endpoint_and_deployment_and_prints_a_request(azure, capsys):
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_NC24ads_A100_v4", *WORKSPACE])
    out = capsys.readouterr().out
    assert code == 0
    assert azure.cls.call_args.kwargs == {"subscription_id": "sub-1", "resource_group_name": "rg-1",
                                          "workspace_name": "ws-1"}
    [deployment] = azure.deployments.written
    assert deployment.name == "blue" and deployment.endpoint_name == "maap-finetuned"
    assert deployment.model == "azureml:maap-finetuned:1"
    assert deployment.instance_type == "Standard_NC24ads_A100_v4" and deployment.instance_count == 1
    assert deployment.request_settings.request_timeout_ms == 90000
    # Endpoint created first (key auth, no traffic), then all traffic routed to the deployment.
    assert azure.endpoints.writes == [
        {"name": "maap-finetuned", "traffic": {}, "auth_mode": "Key"},
        {"name": "maap-finetuned", "traffic": {"blue": 100}, "auth_mode": "Key"},
    ]
    assert "scoring_uri: https://maap-finetuned.eastus.inference.ml.azure.com/score" in out
    request = json.loads(out.split("sample request (request.json):\n", 1)[1].split("\ninvoke:", 1)[0])
    assert request["messages"][0]["role"] == "user"
    assert "az ml online-endpoint invoke --name maap-finetuned --request-file request.json" in out


def test_updates_an_existing_endpoint(azure, capsys):
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_DS3_v2", "--endpoint-name",
                        "contoso-chat", "--deployment-name", "green", "--instance-count", "2", *WORKSPACE])
    assert code == 0
    assert [w["traffic"] for w in azure.endpoints.writes] == [{"green": 100}]  # not re-created, traffic moved
    assert azure.deployments.written[0].instance_count == 2
    assert "endpoint contoso-chat updated" in capsys.readouterr().out


def test_registry_model_reference(azure):
    code = deploy.main(["--model", "maap-finetuned:3", "--registry", "shared-models", "--instance-type", "Standard_DS3_v2",
                        *WORKSPACE])
    assert code == 0
    assert azure.deployments.written[0].model == "azureml://registries/shared-models/models/maap-finetuned/versions/3"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "maap-finetuned:9"], "error: model maap-finetuned:9 is not registered in the workspace"),
        (["--model", "other:1"], "error: model other:1 is a custom_model, not an mlflow_model"),
        (["--model", "maap-finetuned"], "--model 'maap-finetuned': expected NAME:VERSION"),
        (["--model", "maap-finetuned:1", "--endpoint-name", "9bad"], "--endpoint-name '9bad'"),
    ],
)
def test_user_errors_without_traceback(azure, capsys, argv, message):
    code = deploy.main([*argv, "--instance-type", "Standard_DS3_v2", *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert azure.deployments.written == []


def test_incomplete_workspace_is_one_line(azure, capsys):
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_DS3_v2", "--subscription", "s"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: incomplete workspace: missing --resource-group, --workspace")
    assert len(err.strip().splitlines()) == 1


def test_azure_refusal_is_one_line(azure, capsys):
    from azure.core.exceptions import HttpResponseError

    error = HttpResponseError("QuotaExceeded: not enough quota for Standard_NC24ads_A100_v4\nmore details...")
    error.status_code = 400
    azure.client.online_deployments.begin_create_or_update.side_effect = error
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_NC24ads_A100_v4", *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == ("error: Azure ML refused deploying maap-finetuned:1 to endpoint maap-finetuned (HTTP 400): "
                           "QuotaExceeded: not enough quota for Standard_NC24ads_A100_v4")


@pytest.mark.parametrize(("model", "endpoint"), [("maap-finetuned", "maap-finetuned"), ("My_Model.v2", "my-model-v2"),
                                                 ("7b-chat", "ep-7b-chat"), ("x" * 40, "x" * 32)])
def test_default_endpoint_name(model, endpoint):
    assert deploy.default_endpoint_name(model) == endpoint
    assert deploy.ENDPOINT_NAME.match(endpoint)

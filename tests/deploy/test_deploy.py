"""pipelines/deploy.py against a fake MLClient: endpoint, deployment, traffic, errors in one line.

The operation groups are `create_autospec` over the SDK's classes, so a wrong method or keyword fails.
"""

from __future__ import annotations

import json
from unittest.mock import create_autospec

import pytest

from pipelines import deploy

WORKSPACE = ["--subscription", "sub-1", "--resource-group", "rg-1", "--workspace", "ws-1"]
ENDPOINT = deploy.default_endpoint_name("maap-finetuned", "sub-1/rg-1/ws-1")


class Poller:
    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class FakeEndpoints:
    def __init__(self, existing=()):
        from azure.ai.ml.operations import OnlineEndpointOperations

        self.store = {e.name: e for e in existing}
        self.writes = []
        self.spec = create_autospec(OnlineEndpointOperations, instance=True)
        self.spec.get.side_effect = self.get
        self.spec.begin_create_or_update.side_effect = self.begin_create_or_update

    def get(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name not in self.store:
            raise ResourceNotFoundError(f"endpoint {name} not found")
        return self.store[name]

    def begin_create_or_update(self, endpoint):
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        # The service answers with the stored endpoint, its read-only scoring URI filled in.
        endpoint = ManagedOnlineEndpoint(name=endpoint.name, auth_mode=endpoint.auth_mode, traffic=endpoint.traffic,
                                         description=endpoint.description, tags=endpoint.tags,
                                         scoring_uri=f"https://{endpoint.name}.eastus.inference.ml.azure.com/score")
        self.store[endpoint.name] = endpoint
        self.writes.append({"name": endpoint.name, "traffic": dict(endpoint.traffic or {}),
                            "auth_mode": endpoint.auth_mode})
        return Poller(endpoint)


class FakeDeployments:
    def __init__(self):
        from azure.ai.ml.operations import OnlineDeploymentOperations

        self.written = []
        self.error = None
        self.spec = create_autospec(OnlineDeploymentOperations, instance=True)
        self.spec.begin_create_or_update.side_effect = self.begin_create_or_update

    def begin_create_or_update(self, deployment):
        if self.error:
            raise self.error
        self.written.append(deployment)
        return Poller(deployment)


class FakeModels:
    def __init__(self, models):
        from azure.ai.ml.operations import ModelOperations

        self.models = models
        self.spec = create_autospec(ModelOperations, instance=True)
        self.spec.get.side_effect = self.get

    def get(self, name, version):
        from azure.core.exceptions import ResourceNotFoundError

        if (name, version) not in self.models:
            raise ResourceNotFoundError("model not found")
        return self.models[(name, version)]


class Registered:
    def __init__(self, type_="mlflow_model", tags=None):
        self.type = type_
        self.tags = tags or {}


@pytest.fixture
def azure(monkeypatch):
    """A fake workspace with maap-finetuned:1 registered; MLClient and the credential patched."""

    class Workspace:
        clients = []
        endpoints = FakeEndpoints()
        deployments = FakeDeployments()
        models = FakeModels({("maap-finetuned", "1"): Registered(), ("other", "1"): Registered("custom_model")})

    class FakeMLClient:
        def __init__(self, credential, subscription_id=None, resource_group_name=None, workspace_name=None, **kw):
            self.scope = (subscription_id, resource_group_name, workspace_name)
            self.subscription_id, self.resource_group_name, self.workspace_name = self.scope
            self.online_endpoints = Workspace.endpoints.spec
            self.online_deployments = Workspace.deployments.spec
            self.models = Workspace.models.spec
            Workspace.clients.append(self)

    monkeypatch.setattr("azure.ai.ml.MLClient", FakeMLClient)
    monkeypatch.setattr("azure.identity.DefaultAzureCredential", lambda **kw: object())
    for var in ("AZURE_SUBSCRIPTION_ID", "AZURE_RESOURCE_GROUP", "AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME",
                "AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME"):
        monkeypatch.delenv(var, raising=False)
    return Workspace


def test_creates_endpoint_and_deployment_and_prints_a_request(azure, capsys):
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_NC24ads_A100_v4", *WORKSPACE])
    out = capsys.readouterr().out
    assert code == 0
    assert azure.clients[0].scope == ("sub-1", "rg-1", "ws-1")
    [deployment] = azure.deployments.written
    assert deployment.name == "blue" and deployment.endpoint_name == ENDPOINT
    assert deployment.model == "azureml:maap-finetuned:1"
    assert deployment.instance_type == "Standard_NC24ads_A100_v4" and deployment.instance_count == 1
    assert deployment.request_settings.request_timeout_ms == 180000  # Azure's documented maximum
    assert deployment.code_configuration.scoring_script == "score.py"
    assert deployment.environment.name == "maap-finetune-train-gpu"
    probe = deployment.readiness_probe  # at least 10 minutes to load the weights before "unready"
    assert probe.initial_delay + probe.failure_threshold * probe.period >= 600
    # Endpoint created first (key auth, no traffic), then all traffic routed to the deployment.
    assert azure.endpoints.writes == [
        {"name": ENDPOINT, "traffic": {}, "auth_mode": "key"},
        {"name": ENDPOINT, "traffic": {"blue": 100}, "auth_mode": "key"},
    ]
    assert f"scoring_uri: https://{ENDPOINT}.eastus.inference.ml.azure.com/score" in out
    request = json.loads(out.split("sample request (request.json):\n", 1)[1].split("\ninvoke:", 1)[0])
    assert request == deploy.SAMPLE_REQUEST and request["input_data"]["messages"][0]["role"] == "user"
    assert f"az ml online-endpoint invoke --name {ENDPOINT} --request-file request.json" in out


def test_updates_an_existing_endpoint(azure, capsys):
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    azure.endpoints.store["contoso-chat"] = ManagedOnlineEndpoint(name="contoso-chat", auth_mode="key",
                                                                  traffic={"blue": 100})
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
    azure.deployments.error = error
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_NC24ads_A100_v4", *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == (f"error: Azure ML refused deploying maap-finetuned:1 to endpoint {ENDPOINT} (HTTP 400): "
                           "QuotaExceeded: not enough quota for Standard_NC24ads_A100_v4")


@pytest.mark.parametrize("model", ["maap-finetuned", "My_Model.v2", "7b-chat", "x" * 40, "a--b__c", "z"])
def test_default_endpoint_name_is_valid_stable_and_per_workspace(model):
    name = deploy.default_endpoint_name(model, "sub-1/rg-1/ws-1")
    assert deploy.ENDPOINT_NAME.match(name) and len(name) <= 32, name
    assert name == deploy.default_endpoint_name(model, "sub-1/rg-1/ws-1")
    assert name != deploy.default_endpoint_name(model, "sub-2/rg-1/ws-1")


def test_dry_run_prints_yaml_and_the_input_data_request_without_calling_azure(azure, capsys):
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_NC24ads_A100_v4", "--dry-run",
                        *WORKSPACE])
    out = capsys.readouterr().out
    assert code == 0
    import yaml

    endpoint_text, rest = out.split("# endpoint.yaml\n", 1)[1].split("# deployment.yaml\n", 1)
    deployment_text, request_text = rest.split("sample request (request.json):\n", 1)
    endpoint, deployment = yaml.safe_load(endpoint_text), yaml.safe_load(deployment_text)
    assert endpoint["name"] == ENDPOINT and endpoint["auth_mode"] == "key"
    assert deployment["request_settings"]["request_timeout_ms"] == 180000
    assert deployment["liveness_probe"]["initial_delay"] == 600
    assert deployment["code_configuration"]["scoring_script"] == "score.py"
    assert json.loads(request_text) == deploy.SAMPLE_REQUEST
    # No Azure operation was called.
    for fake in (azure.endpoints.spec, azure.deployments.spec, azure.models.spec):
        assert fake.method_calls == []


@pytest.mark.parametrize(("instance", "weights", "warned"), [("Standard_NC4as_T4_v3", 7.6, False),
                                                             ("Standard_NC4as_T4_v3", 15.3, True),
                                                             ("Standard_NC24ads_A100_v4", 15.3, False),
                                                             ("Standard_DS3_v2", 15.3, True)])
def test_instance_type_is_checked_against_the_weights(azure, capsys, instance, weights, warned):
    azure.models.models[("sized", "1")] = Registered(tags={"model_size_bytes": str(int(weights * 1e9))})
    code = deploy.main(["--model", "sized:1", "--instance-type", instance, *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 0
    assert ("warning: " + instance in err) is warned, err

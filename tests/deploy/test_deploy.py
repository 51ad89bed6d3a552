"""pipelines/deploy.py against the autospecced MLClient of tests/azure_fakes.py: endpoint, deployment,
traffic, instance-size check, --dry-run, errors in one line.

What the fake workspace answers comes from REST payloads (`_from_rest_object`), never from the entity
the code sent.
"""

from __future__ import annotations

import json

import pytest

from pipelines import deploy
from tests.azure_fakes import (
    ModelStore,
    from_rest,
    operation_classes,
    patch_azure,
    poller,
    request_payload,
    resource_id,
    rest_payload,
    system_data,
)

WORKSPACE = ["--subscription", "sub-1", "--resource-group", "rg-1", "--workspace", "ws-1"]
ENDPOINT = deploy.default_endpoint_name("maap-finetuned", "sub-1/rg-1/ws-1")


class Endpoints:
    """`client.online_endpoints` as the service keeps them: REST payloads in, `_from_rest_object` out."""

    def __init__(self, operations, *fixtures: str):
        self.payloads = {payload["name"]: payload for payload in map(rest_payload, fixtures)}
        self.writes: list[dict] = []  # a summary of each PUT
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
                            "auth_mode": endpoint.auth_mode})
        # The service fills in the read-only fields, the scoring URI among them.
        body.update(id=resource_id("onlineEndpoints", endpoint.name), name=endpoint.name, kind="Managed",
                    type="Microsoft.MachineLearningServices/workspaces/onlineEndpoints", systemData=system_data())
        host = f"https://{endpoint.name}.eastus.inference.ml.azure.com"
        body["properties"].update(scoringUri=f"{host}/score", swaggerUri=f"{host}/swagger.json",
                                  provisioningState="Succeeded")
        self.payloads[endpoint.name] = body
        return poller(from_rest("online_endpoint", body))


class Deployments:
    """`client.online_deployments`: keeps the entities sent (to assert on what was asked); the SDK's own
    conversion to the REST body validates each one."""

    def __init__(self, operations):
        self.written = []
        operations.begin_create_or_update.side_effect = self.begin_create_or_update

    def begin_create_or_update(self, deployment, *, local=False, vscode_debug=False, skip_script_validation=False,
                               local_enable_gpu=False):
        body = request_payload(deployment)
        self.written.append(deployment)
        body.update(id=resource_id("onlineEndpoints", f"{deployment.endpoint_name}/deployments/{deployment.name}"),
                    name=deployment.name, systemData=system_data())
        body["properties"].update(provisioningState="Succeeded", scaleSettings={"scaleType": "Default"})
        return poller(from_rest("online_deployment", body))


def add_model(models: ModelStore, name: str, tags: dict[str, str]) -> None:
    """Version 1 of `name` in the store: the recorded mlflow_model payload under another name, with `tags`."""
    payload = rest_payload("model_maap-finetuned_1")
    payload["id"] = resource_id("models", name, "1")
    payload["properties"]["tags"] = tags
    models.payloads.append(payload)


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
    azure.cls.assert_called_once()
    assert azure.cls.call_args.kwargs == {"subscription_id": "sub-1", "resource_group_name": "rg-1",
                                          "workspace_name": "ws-1"}
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
    assert azure.endpoints.get("contoso-chat").traffic == {"blue": 100}  # the recorded endpoint
    code = deploy.main(["--model", "maap-finetuned:1", "--instance-type", "Standard_DS3_v2", "--endpoint-name",
                        "contoso-chat", "--deployment-name", "green", "--instance-count", "2", *WORKSPACE])
    assert code == 0
    assert [w["traffic"] for w in azure.endpoints.writes] == [{"green": 100}]  # not re-created, traffic moved
    assert azure.deployments.written[0].instance_count == 2
    assert "endpoint contoso-chat updated" in capsys.readouterr().out


def registry_version(models: ModelStore, version: str, tags: dict[str, str]) -> None:
    """maap-finetuned:`version` in the registry shared-models (the recorded payload, moved there)."""
    payload = rest_payload("model_maap-finetuned_1")
    payload["id"] = f"azureml://registries/shared-models/models/maap-finetuned/versions/{version}"  # a registry's ids
    payload["name"] = version
    payload["properties"]["tags"] = tags
    models.payloads.append(payload)


def test_registry_model_reference(azure):
    registry_version(azure.models, "3", {"maap_verified": "true"})
    code = deploy.main(["--model", "maap-finetuned:3", "--registry", "shared-models", "--instance-type", "Standard_DS3_v2",
                        *WORKSPACE])
    assert code == 0
    assert azure.cls.call_args_list[-1].kwargs == {"registry_name": "shared-models"}  # read from the registry
    assert azure.deployments.written[0].model == "azureml://registries/shared-models/models/maap-finetuned/versions/3"


@pytest.mark.parametrize(("version", "message"), [
    ("4", "error: model maap-finetuned:4 is not verified (tag maap_verified: false)"),
    ("5", "error: model maap-finetuned:5 is not registered in the registry shared-models"),
])
def test_a_registry_model_must_exist_and_be_verified(azure, capsys, version, message):
    registry_version(azure.models, "4", {"maap_verified": "false"})
    code = deploy.main(["--model", f"maap-finetuned:{version}", "--registry", "shared-models", "--instance-type",
                        "Standard_DS3_v2", *WORKSPACE])
    assert code == 2 and message in capsys.readouterr().err
    assert azure.deployments.written == []


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
    # No Azure operation was called, in any operation group.
    for group in operation_classes():
        assert getattr(azure.client, group).mock_calls == [], group


@pytest.mark.parametrize(("instance", "weights", "warned"), [("Standard_NC4as_T4_v3", 7.6, False),
                                                             ("Standard_NC4as_T4_v3", 15.3, True),
                                                             ("Standard_NC24ads_A100_v4", 15.3, False),
                                                             ("Standard_DS3_v2", 15.3, True)])
def test_instance_type_is_checked_against_the_weights(azure, capsys, instance, weights, warned):
    add_model(azure.models, "sized", {"model_size_bytes": str(int(weights * 1e9))})
    code = deploy.main(["--model", "sized:1", "--instance-type", instance, *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 0
    assert ("warning: " + instance in err) is warned, err


@pytest.mark.parametrize(("model_format", "extra", "warned"), [("merged", [], True),
                                                               ("merged", ["--weights-gb", "7.6"], False),
                                                               ("adapter", [], False)])
def test_the_tag_register_writes_drives_the_warning(azure, capsys, tmp_path, model_format, extra, warned):
    """Register's tags for a 15.3 GB folder (a sparse weights file: no disk used), registered through the same
    fake workspace; deploy reads them back without --weights-gb. An adapter's folder lacks its base weights.
    The folder uploaded is a small one with those tags: copying and hashing 15 GB would take minutes."""
    from maap_finetune.registry.azure import register_azure
    from maap_finetune.registry.tags import build_tags

    folder = tmp_path / "mlflow_model"
    (folder / "model").mkdir(parents=True)
    mlmodel = "flavors: {}\n"
    (folder / "MLmodel").write_text(mlmodel)
    with open(folder / "model" / "model.safetensors", "wb") as weights:
        weights.truncate(15_300_000_000)
    tags = build_tags({}, {"passed": True}, {}, "pipeline_job_7", "register_step_1", folder)
    tags["model_format"] = model_format
    small = tmp_path / "uploaded"
    small.mkdir()
    (small / "MLmodel").write_text(mlmodel)

    def check(copy):  # the load-back check of this flavor-less model: the registry's copy reads back
        if (copy / "MLmodel").read_text() != mlmodel:
            raise AssertionError(copy)

    azure.models.storage = tmp_path / "storage"
    register_azure(small, "sized", tags, "sized model", None, check=check, ml_client=azure.client)
    assert azure.models.payloads[-1]["properties"]["tags"]["maap_verified"] == "true"
    assert int(azure.models.payloads[-1]["properties"]["tags"]["model_size_bytes"]) == 15_300_000_000 + len(mlmodel)

    code = deploy.main(["--model", "sized:1", "--instance-type", "Standard_NC4as_T4_v3", *extra, *WORKSPACE])
    err = capsys.readouterr().err
    assert code == 0 and len(azure.deployments.written) == 1
    assert ("warning: Standard_NC4as_T4_v3 has 16 GB of GPU memory; the model needs about 19.9 GB "
            "(15.3 GB of bf16 weights" in err) is warned, err
    assert ("warning:" in err) is warned, err

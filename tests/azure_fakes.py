"""One fake Azure ML workspace for every test that talks to Azure: the SDK's own classes, no network.

- The client (`MLClient`) and each operation group on it (`client.jobs`, `.compute`, `.models`, ...)
  are `unittest.mock.create_autospec` of the real azure-ai-ml classes, so a misspelt method is an
  AttributeError and a wrong argument a TypeError. The specs drop `**kwargs` from the signatures: the
  SDK forwards unknown keywords down its HTTP pipeline, where a typo (`experiment=` for
  `experiment_name=`) would go unnoticed.
- What Azure answers is built the SDK's way, `<Entity>._from_rest_object` on a REST-shaped payload:
  a recorded one under tests/fixtures/azure_rest/ (`rest_entity`), or the request the SDK would send
  (`entity._to_rest_object()`) plus the fields the service fills in (`service_echo`). A test never
  gets back the Python object it put in.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import typing
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "azure_rest"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
RESOURCE_GROUP = "rg-ml"
WORKSPACE = "ws-ml"
WORKSPACE_ID = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
                f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")


@functools.cache
def strict(cls: type) -> type:
    """`cls` with `**kwargs` removed from every public method's signature (for autospec only)."""
    namespace = {}
    for name, member in inspect.getmembers(cls, callable):
        if name.startswith("_") and name != "__init__":
            continue
        kind = type(inspect.getattr_static(cls, name))
        try:
            signature = inspect.signature(member)
        except (TypeError, ValueError):
            continue
        params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        if len(params) == len(signature.parameters):
            continue

        def stub(*args, **kwargs):  # never called: the autospec only reads its signature
            raise AssertionError("strict() stubs are specs, not code")

        if kind is classmethod:  # the bound signature lacks `cls`; the spec needs it back
            params.insert(0, inspect.Parameter("cls", inspect.Parameter.POSITIONAL_ONLY))
        stub.__signature__ = signature.replace(parameters=params)
        namespace[name] = kind(stub) if kind in (classmethod, staticmethod) else stub
    return type(cls.__name__, (cls,), namespace)


@functools.cache
def operation_classes() -> dict[str, type]:
    """MLClient's operation groups, from the return annotations of its properties (jobs -> JobOperations)."""
    from azure.ai.ml import MLClient

    groups = {}
    for name, member in vars(MLClient).items():
        if isinstance(member, property) and not name.startswith("_"):
            returned = typing.get_type_hints(member.fget).get("return")
            if inspect.isclass(returned) and returned.__name__.endswith("Operations"):
                groups[name] = returned
    return groups


def fake_ml_client():
    """An MLClient instance whose every operation group is an autospec of the real class."""
    from azure.ai.ml import MLClient

    client = mock.create_autospec(strict(MLClient), instance=True)
    for name, cls in operation_classes().items():
        setattr(client, name, mock.create_autospec(strict(cls), instance=True))
    return client


def patch_azure(monkeypatch, client=None, credential: bool = True) -> SimpleNamespace:
    """Replace `azure.ai.ml.MLClient` (and `DefaultAzureCredential`) with autospecs; every MLClient(...)
    and MLClient.from_config(...) returns `client`, MLClient(...) with the workspace scope it was given.
    Returns (cls, client, credential)."""
    from azure.ai.ml import MLClient

    client = client or fake_ml_client()
    cls = mock.create_autospec(strict(MLClient))

    def construct(credential, subscription_id=None, resource_group_name=None, workspace_name=None, **_):
        # The real client answers its scope from these arguments (deploy.py names endpoints after them).
        for attribute, value in (("subscription_id", subscription_id), ("resource_group_name", resource_group_name),
                                 ("workspace_name", workspace_name)):
            if value is not None:
                setattr(client, attribute, value)
        return client

    cls.side_effect = construct
    cls.from_config.return_value = client
    monkeypatch.setattr("azure.ai.ml.MLClient", cls)
    credential_cls = None
    if credential:
        from azure.identity import DefaultAzureCredential

        credential_cls = mock.create_autospec(strict(DefaultAzureCredential))
        monkeypatch.setattr("azure.identity.DefaultAzureCredential", credential_cls)
    return SimpleNamespace(cls=cls, client=client, credential=credential_cls)


def poller(value):
    """What a `begin_*` call returns: an LROPoller whose `result()` is `value`."""
    from azure.core.polling import LROPoller

    done = mock.create_autospec(LROPoller, instance=True)
    done.result.return_value = value
    return done


# ---------------------------------------------------------------------------------------------
# Entities from REST payloads


def _rest_types() -> dict[str, tuple[type, type]]:
    """kind -> (REST model the service returns, entity whose `_from_rest_object` reads it)."""
    from azure.ai.ml._restclient.arm_ml_service import models as rest
    from azure.ai.ml.entities import (
        Compute,
        Component,
        Environment,
        Job,
        MarketplaceSubscription,
        Model,
        OnlineDeployment,
        OnlineEndpoint,
        Registry,
        Workspace,
    )

    return {
        "compute": (rest.ComputeResource, Compute),
        "job": (rest.JobBase, Job),
        "model": (rest.ModelVersion, Model),
        "online_endpoint": (rest.OnlineEndpoint, OnlineEndpoint),
        "online_deployment": (rest.OnlineDeployment, OnlineDeployment),
        "environment": (rest.EnvironmentVersion, Environment),
        "component": (rest.ComponentVersion, Component),
        "registry": (rest.Registry, Registry),
        "workspace": (rest.Workspace, Workspace),
        "marketplace_subscription": (rest.MarketplaceSubscription, MarketplaceSubscription),
    }


RECORDING_KEY = "_recording"  # each fixture names the recorded response whose shape it follows; not part of it


def rest_payload(fixture: str) -> dict:
    """The JSON of tests/fixtures/azure_rest/<fixture>.json (a fresh copy), without its RECORDING_KEY."""
    payload = json.loads((FIXTURES / f"{fixture}.json").read_text())
    payload.pop(RECORDING_KEY, None)
    return payload


def from_rest(kind: str, payload: dict):
    """The entity the SDK makes of `payload`, as its operations do after an HTTP call."""
    from azure.ai.ml._restclient.arm_ml_service._utils.model_base import _deserialize

    rest_cls, entity_cls = _rest_types()[kind]
    return entity_cls._from_rest_object(_deserialize(rest_cls, copy.deepcopy(payload)))


def rest_entity(kind: str, fixture: str, **changes):
    """The entity of a recorded payload; `changes` set top-level keys (e.g. name) first."""
    return from_rest(kind, {**rest_payload(fixture), **changes})


def request_payload(entity, location: str = "eastus") -> dict:
    """The JSON body the SDK sends for `entity` (its `_to_rest_*` conversion, as a plain dict); the
    conversion runs the SDK's own client-side validation (an endpoint's name, for one)."""
    if hasattr(entity, "_to_rest_online_endpoint"):
        body = entity._to_rest_online_endpoint(location)
    elif "location" in inspect.signature(entity._to_rest_object).parameters:
        body = entity._to_rest_object(location=location)
    else:
        body = entity._to_rest_object()
    return json.loads(json.dumps(body.as_dict() if hasattr(body, "as_dict") else body, default=str))


def resource_id(collection: str, name: str, version: str | None = None, scope: str = WORKSPACE_ID) -> str:
    tail = f"/{collection}/{name}" + (f"/versions/{version}" if version else "")
    return scope + tail


def system_data() -> dict:
    return {"createdAt": "2025-01-12T10:00:00.000000+00:00", "createdBy": "Ada Lovelace", "createdByType": "User",
            "lastModifiedAt": "2025-01-12T10:00:00.000000+00:00"}


def service_echo(kind: str, entity, *, name: str, id: str, properties: dict | None = None):  # noqa: A002
    """What the service answers to a PUT of `entity`: the request body plus the read-only fields it
    fills in (id, name, systemData, and `properties` merged into body["properties"])."""
    body = request_payload(entity)
    body.update(id=id, name=name, systemData=system_data())
    body.setdefault("properties", {}).update(properties or {})
    return from_rest(kind, body)


class ModelStore:
    """`client.models` backed by REST payloads: `create_or_update` numbers versions as the service does and
    answers through `Model._from_rest_object`; `list` and `get` read the stored payloads back.

    With `storage` (a folder) it also keeps the files: a version created from a local folder (or from a job
    output named in `job_outputs`) is copied under `storage`, `after_upload` may change that copy (an upload
    cut short), and `download` writes it where the SDK does, `<download_path>/<name>/<folder name>/`. A
    `create_or_update` of an existing version updates its tags and description and refuses another path,
    as the service does."""

    def __init__(self, operations, *fixtures: str, storage: Path | None = None):
        self.payloads: list[dict] = [rest_payload(f) for f in fixtures]
        self.requests: list = []  # the Model entities the code sent, to assert on what was asked
        self.storage = storage
        self.job_outputs: dict[str, Path] = {}
        self.files: dict[tuple[str, str], Path] = {}  # (name, version) -> the stored copy
        self.after_upload = None
        operations.list.side_effect = self.list
        operations.get.side_effect = self.get
        operations.create_or_update.side_effect = self.create_or_update
        operations.download.side_effect = self.download

    def _named(self, name):
        return [p for p in self.payloads if p["id"].split("/models/")[1].split("/")[0] == name]

    def list(self, name=None, stage=None, *, list_view_type=None):
        from azure.core.exceptions import ResourceNotFoundError

        found = self._named(name) if name else self.payloads
        if name and not found:
            raise ResourceNotFoundError(f"Model container {name} not found")
        return iter([from_rest("model", p) for p in found])

    def _payload(self, name, version):
        from azure.core.exceptions import ResourceNotFoundError

        for payload in self._named(name):
            if payload["name"] == str(version):
                return payload
        raise ResourceNotFoundError(f"Model {name}:{version} not found")

    def get(self, name, version=None, label=None):
        return from_rest("model", self._payload(name, version))

    def create_or_update(self, model):
        self.requests.append(model)
        if model.version is not None and any(p["name"] == str(model.version) for p in self._named(model.name)):
            return self._update(model)
        version = str(len(self._named(model.name)) + 1)
        body = request_payload(model)
        body.update(id=resource_id("models", model.name, version), name=version, systemData=system_data(),
                    type="Microsoft.MachineLearningServices/workspaces/models/versions")
        # The SDK uploads the local folder first; the service stores the datastore URI and the MLmodel flavors.
        body["properties"]["modelUri"] = (f"azureml://subscriptions/{SUBSCRIPTION}/resourcegroups/{RESOURCE_GROUP}/"
                                          f"workspaces/{WORKSPACE}/datastores/workspaceblobstore/paths/LocalUpload/"
                                          f"0f1e2d3c4b5a69788796a5b4c3d2e1f0/{Path(str(model.path)).name}")
        body["properties"].setdefault("flavors", {"python_function": {"data": {"loader_module": "mlflow.transformers"}}})
        self._store_files(model, version)
        self.payloads.append(body)
        return from_rest("model", body)

    def _update(self, model):
        from azure.core.exceptions import HttpResponseError

        payload = self._payload(model.name, model.version)
        sent = request_payload(model)["properties"]
        if sent.get("modelUri") != payload["properties"]["modelUri"]:
            raise HttpResponseError("Cannot update asset path of an existing asset version")  # the SDK's ASSET_PATH_ERROR
        payload["properties"]["tags"] = sent.get("tags") or {}
        payload["properties"]["description"] = sent.get("description")
        return from_rest("model", payload)

    def _store_files(self, model, version):
        import shutil

        source = self.job_outputs.get(str(model.path), Path(str(model.path)))
        if self.storage is None or not source.is_dir():
            return
        copy = Path(self.storage) / model.name / version / Path(str(model.path)).name
        shutil.copytree(source, copy)
        if self.after_upload is not None:
            self.after_upload(copy)
        self.files[(model.name, version)] = copy

    def download(self, name, version, download_path="."):
        import shutil

        self._payload(name, version)  # ResourceNotFoundError as the SDK's own get raises it
        copy = self.files[(name, str(version))]  # a version registered by the code under test has files
        shutil.copytree(copy, Path(download_path) / name / copy.name)


# The variables Azure ML sets inside a pipeline step (a register step of pipeline job `pipeline_job_7`).
AZURE_JOB_ENV = {
    "AZUREML_RUN_ID": "register_step_1",
    "AZUREML_ROOT_RUN_ID": "pipeline_job_7",
    "AZUREML_ARM_SUBSCRIPTION": "00000000-0000-0000-0000-000000000001",
    "AZUREML_ARM_RESOURCEGROUP": "rg-ml",
    "AZUREML_ARM_WORKSPACE_NAME": "ws-ml",
}

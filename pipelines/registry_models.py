"""Checks of a registry model (`azureml://registries/<registry>/models/<name>/versions|labels/<v>`) at submit,
before anything is uploaded: the registry must be replicated to the workspace's region, and a retired model is
named with its date.

- Region: a registry model consumed from a region the registry is not replicated to fails with HTTP 400
  ("Invalid region ... for operation consume in registry"). `MLClient(registry_name=...).registries.get` gives the
  registry's `replication_locations`; the workspace's is `workspaces.get(...).location`.
- Retirement: Azure ML's catalog models carry their dates as tags, which `models.get` returns; azureml-assets
  writes them in each model's spec.yaml (Azure/azureml-assets
  assets/models/system/phi-3-mini-4k-instruct/spec.yaml at 0103fd16903e3cba56975012d96b57876b4ae0e6:
  FinetuneDeprecationDate, FinetuneRetirementDate, InferenceDeprecationDate, InferenceRetirementDate, all
  'YYYY-MM-DD').
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sys
from dataclasses import dataclass

from maap_finetune.common.errors import UserError
from pipelines.maas_catalog import region_key

REGISTRY_MODEL = re.compile(
    r"^azureml://registries/(?P<registry>[^/]+)/models/(?P<name>[^/]+)/(?P<kind>versions|labels)/(?P<ref>[^/]+)$")
# Tag -> what it dates, in the order a warning names them (azureml-assets spec.yaml, above).
DATE_TAGS = {
    "FinetuneRetirementDate": "fine-tuning retirement",
    "InferenceRetirementDate": "inference retirement",
    "FinetuneDeprecationDate": "fine-tuning deprecation",
    "InferenceDeprecationDate": "inference deprecation",
}


@dataclass(frozen=True)
class RegistryModelRef:
    registry: str
    name: str
    version: str | None
    label: str | None

    @property
    def uri(self) -> str:
        tail = f"versions/{self.version}" if self.version else f"labels/{self.label}"
        return f"azureml://registries/{self.registry}/models/{self.name}/{tail}"


def parse(uri: str | None) -> RegistryModelRef | None:
    match = REGISTRY_MODEL.match(str(uri or ""))
    if not match:
        return None
    versioned = match["kind"] == "versions"
    return RegistryModelRef(match["registry"], match["name"], match["ref"] if versioned else None,
                            None if versioned else match["ref"])


def registry_client(registry: str):
    """An MLClient scoped to the registry (it finds the registry's subscription and resource group itself)."""
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    return MLClient(DefaultAzureCredential(), registry_name=registry)


def workspace_location(ml_client) -> str:
    return ml_client.workspaces.get(ml_client.workspace_name).location


def check_region(registry, ref: RegistryModelRef, location: str) -> None:
    regions = [r.location for r in (registry.replication_locations or []) if r.location]
    if regions and region_key(location) not in {region_key(r) for r in regions}:
        raise UserError(
            f"model {ref.uri}: registry {ref.registry} is replicated to {', '.join(regions)}, not to the workspace's "
            f"region {location}, and Azure ML refuses to consume a registry model outside its regions (HTTP 400 "
            f"'Invalid region'); use a workspace in {' or '.join(regions)}, or ask the registry's owner to add "
            f"{location} to its replication locations. Nothing was uploaded or submitted")


def date_warnings(model, today: dt.date) -> list[str]:
    """One line per dated tag of the model (retired or deprecated since, or retiring on, that date), and what to
    do when a date has passed."""
    dates = {}
    for tag in DATE_TAGS:
        try:
            dates[tag] = dt.date.fromisoformat(str((model.tags or {})[tag])[:10])
        except (KeyError, ValueError):
            continue
    lines = [f"{model.name} version {model.version}: {DATE_TAGS[tag]} {'since' if when <= today else 'on'} "
             f"{when.isoformat()} ({tag} tag)" for tag, when in dates.items()]
    if any(when <= today for when in dates.values()):
        registry = getattr(parse(getattr(model, "id", None)), "registry", "<registry>")
        lines.append(f"pick a current model: az ml model list --registry-name {registry} (the catalog's model cards "
                     "show each model's dates)")
    return lines


def check_registry_model(ml_client, uri: str, *, location: str | None = None, out=None,
                         today: dt.date | None = None, client_factory=None):
    """The registry model `uri` as `models.get` returns it, after the region check; warnings for its dates."""
    ref = parse(uri)
    if ref is None:
        raise UserError(f"{uri!r} is not a registry model id (azureml://registries/<registry>/models/<name>/versions/<v>)")
    client = (client_factory or registry_client)(ref.registry)
    location = location or workspace_location(ml_client)
    check_region(client.registries.get(ref.registry), ref, location)
    model = client.models.get(ref.name, version=ref.version) if ref.version else client.models.get(ref.name,
                                                                                                   label=ref.label)
    for line in date_warnings(model, today or dt.date.today()):
        print(f"warning: {line}", file=out or sys.stdout)
    return model

"""`submit.py --maas` against the workspace, before anything is uploaded: the model and the workspace's region
against the serverless table (pipelines/maas_catalog.py), the registry's regions and the model's dates
(pipelines/registry_models.py), and the marketplace subscription a partner's model needs.

The subscription is created as azureml-examples' MaaS notebook creates it (Azure/azureml-examples
sdk/python/jobs/finetuning/standalone/model-as-a-service/chat-completion/chat_completion_with_model_as_service.ipynb
at 85865faed34037c88d2da66b3c46d6f57957a3a7): `MarketplaceSubscription(model_id=<the model id without
/versions/<v>>, name=<model name, '.' as '-'>-sub)` through `ml_client.marketplace_subscriptions
.begin_create_or_update`; the notebook skips it "for 1P (Microsoft) models ... Phi family", which the table
marks with the offer "Not applicable". A workspace that already has the subscription reuses it.
"""

from __future__ import annotations

import sys

from maap_finetune.common.errors import UserError
from pipelines import maas_catalog
from pipelines.registry_models import check_registry_model, parse, workspace_location


def subscription_name(model_name: str) -> str:
    return f"{model_name.replace('.', '-')}-sub"


def ensure_marketplace_subscription(ml_client, model, out=None) -> str:
    """The workspace's marketplace subscription to `model`'s offer, created when missing; its name."""
    from azure.ai.ml.entities import MarketplaceSubscription
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    name = subscription_name(model.name)
    model_id = "/".join(str(model.id).split("/")[:-2])  # the notebook's model_id_to_subscribe
    try:
        existing = ml_client.marketplace_subscriptions.get(name)
    except ResourceNotFoundError:
        existing = None
    if existing is not None and str(existing.status).lower() == "subscribed":
        print(f"marketplace subscription {name}: subscribed", file=out or sys.stdout)
        return name
    try:
        created = ml_client.marketplace_subscriptions.begin_create_or_update(
            MarketplaceSubscription(model_id=model_id, name=name)).result()
    except HttpResponseError as err:
        first = (str(getattr(err, "message", None) or err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(
            f"{model.name} is a partner's model: serverless fine-tuning needs the workspace subscribed to its Azure "
            f"Marketplace offer, and creating subscription {name} was refused (HTTP {err.status_code}): {first}. "
            "Someone with Owner or Contributor on the Azure subscription (and a billing account in a country the "
            "offer serves) subscribes it: MLClient(...).marketplace_subscriptions.begin_create_or_update("
            f"MarketplaceSubscription(model_id='{model_id}', name='{name}')), or Subscribe on the model's card in "
            "the Foundry portal; nothing was uploaded or submitted") from None
    print(f"marketplace subscription {name}: {created.status} (created for {model_id})", file=out or sys.stdout)
    return name


def check_workspace(ml_client, model_uri: str, out=None, client_factory=None, today=None):
    """Every check that needs the workspace, in order; returns the registry model as `models.get` answers."""
    ref = parse(model_uri)
    location = workspace_location(ml_client)
    entry = maas_catalog.lookup(ref.name)
    if entry is not None and not entry.runs_in(location):
        raise UserError(
            f"serverless fine-tuning runs {entry.name} in {', '.join(entry.regions)}, not in this workspace's region "
            f"{location} ({maas_catalog.SOURCE}); use a workspace (Foundry project) in one of those regions. "
            "Nothing was uploaded or submitted")
    model = check_registry_model(ml_client, model_uri, location=location, out=out, today=today,
                                 client_factory=client_factory)
    if entry is not None and entry.marketplace:
        ensure_marketplace_subscription(ml_client, model, out=out)
    return model

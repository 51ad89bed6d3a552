"""Azure ML from the commands: the workspace flags, connecting, Azure's errors as user errors, the compute checks.

Workspace: --subscription/--resource-group/--workspace, else the environment variables
AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME (AZURE_WORKSPACE_NAME and the
AZUREML_ARM_* variables Azure ML sets inside jobs also work), else config.json (this folder or a parent,
or --config). Credentials: DefaultAzureCredential (az login, managed identity, AZURE_CLIENT_ID/...).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator

# First variable set wins, per field.
WORKSPACE_ENV = {
    "subscription": ("AZURE_SUBSCRIPTION_ID", "AZUREML_ARM_SUBSCRIPTION"),
    "resource_group": ("AZURE_RESOURCE_GROUP", "AZUREML_ARM_RESOURCEGROUP"),
    "workspace": ("AZUREML_WORKSPACE_NAME", "AZURE_WORKSPACE_NAME", "AZUREML_ARM_WORKSPACE_NAME"),
}


WORKSPACE_HELP = (
    "download config.json from the workspace's overview page in Azure ML studio into this folder (or pass --config), "
    "or pass --subscription, --resource-group and --workspace, "
    "or set AZURE_SUBSCRIPTION_ID, AZURE_RESOURCE_GROUP and AZUREML_WORKSPACE_NAME"
)


AUTH_HELP = (
    "run `az login` (or `az login --use-device-code`), or set AZURE_CLIENT_ID, AZURE_TENANT_ID and "
    "AZURE_CLIENT_SECRET for a service principal, or run where a managed identity is available"
)


def add_workspace_arguments(group) -> None:
    """The workspace flags every Azure CLI of this repo takes (submit, deploy, publish, provision)."""
    group.add_argument("--subscription", help="Azure subscription id")
    group.add_argument("--resource-group", help="resource group of the workspace")
    group.add_argument("--workspace", help="Azure ML workspace name")
    group.add_argument("--config", help="path to the workspace config.json (default: search this folder and its parents)")


def workspace_from_args(args: argparse.Namespace, environ=os.environ) -> tuple[str, str, str] | None:
    """(subscription, resource group, workspace) from flags, then environment; None to use config.json."""
    values = {}
    for name, variables in WORKSPACE_ENV.items():
        values[name] = getattr(args, name) or next((environ[v] for v in variables if environ.get(v)), None)
    if all(values.values()):
        return values["subscription"], values["resource_group"], values["workspace"]
    if any(values.values()):
        from maap_finetune.common.errors import UserError

        missing = [name.replace("_", "-") for name, value in values.items() if not value]
        raise UserError(
            f"incomplete workspace: missing {', '.join('--' + m for m in missing)} "
            f"(or {', '.join(WORKSPACE_ENV[m.replace('-', '_')][0] for m in missing)})"
        )
    return None


def first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Turn Azure's authentication, network and HTTP errors into one clear UserError."""
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    from maap_finetune.common.errors import UserError

    try:
        yield
    except ClientAuthenticationError as err:
        raise UserError(f"could not authenticate to Azure while {action}: {AUTH_HELP}. ({first_line(err)})") from None
    except ServiceRequestError as err:
        raise UserError(f"could not reach Azure while {action}: {first_line(err)}") from None
    except HttpResponseError as err:
        status = f" (HTTP {err.status_code})" if getattr(err, "status_code", None) else ""
        raise UserError(f"Azure ML refused {action}{status}: {first_line(err)}") from None


def connect(args: argparse.Namespace):
    """An MLClient for the workspace named by flags, environment or config.json."""
    from azure.ai.ml import MLClient
    from azure.ai.ml.exceptions import MlException
    from azure.identity import DefaultAzureCredential

    from maap_finetune.common.errors import UserError

    # On failure DefaultAzureCredential logs a page about every credential it tried; our message says
    # what to do in one line instead (and carries the first line of the SDK's).
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    credential = DefaultAzureCredential()
    workspace = workspace_from_args(args)
    if workspace is not None:
        subscription, resource_group, name = workspace
        return MLClient(credential, subscription_id=subscription, resource_group_name=resource_group, workspace_name=name)
    try:
        return MLClient.from_config(credential, path=args.config)
    except (MlException, OSError, ValueError) as err:
        raise UserError(f"no Azure ML workspace configured ({first_line(err)}): {WORKSPACE_HELP}") from None


def _compute_listing(ml_client, clusters_only: bool = False) -> str:
    computes = list(ml_client.compute.list())
    shown = [c for c in computes if not clusters_only or str(c.type).lower() == "amlcompute"]
    if not shown:
        kind = "compute clusters" if clusters_only else "computes"
        return f"the workspace has no {kind}; create one with `az ml compute create --type amlcompute ...`"
    label = "compute clusters" if clusters_only else "computes"
    return f"available {label}: " + ", ".join(f"{c.name} ({c.type})" for c in sorted(shown, key=lambda c: c.name))


def check_computes(ml_client, settings) -> dict:
    """Each compute the pipeline uses exists and is a cluster (AmlCompute) big enough for fine-tune; returns them by
    name."""
    from azure.core.exceptions import ResourceNotFoundError

    from maap_finetune.common.errors import UserError

    names = [settings.compute] + ([settings.cpu_compute] if settings.cpu_compute and settings.cpu_compute != settings.compute else [])
    found = {}
    for name in names:
        flag = "--compute" if name == settings.compute else "--cpu-compute"
        try:
            compute = ml_client.compute.get(name)
        except ResourceNotFoundError:
            raise UserError(f"{flag} {name!r}: no such compute in the workspace; {_compute_listing(ml_client)}") from None
        kind = str(getattr(compute, "type", "")).lower()
        if kind != "amlcompute":
            raise UserError(
                f"{flag} {name!r} is a {kind or 'compute of unknown type'}, not a compute cluster (AmlCompute); "
                f"{_compute_listing(ml_client, clusters_only=True)}"
            )
        max_instances = getattr(compute, "max_instances", None)
        if name == settings.compute and max_instances and settings.instance_count > max_instances:
            raise UserError(
                f"--instance-count {settings.instance_count} exceeds {name!r}'s max_instances ({max_instances})"
            )
        found[name] = compute
    return found

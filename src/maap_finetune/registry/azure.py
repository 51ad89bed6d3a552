"""Register in the Azure ML workspace (or an Azure ML registry) from inside a pipeline job.

Uses only what the job has: its workspace from `AZUREML_ARM_*` (see `target.job_workspace`) and a
credential from azure-identity, chosen by `job_credential`:
1. `DEFAULT_IDENTITY_CLIENT_ID` set (the compute's user-assigned managed identity) ->
   `ManagedIdentityCredential(client_id=...)`;
2. `OBO_ENDPOINT` set (the job runs with the submitting user's identity, `identity: user_identity`) ->
   `AzureMLOnBehalfOfCredential`;
3. otherwise `DefaultAzureCredential` (environment variables, workload or managed identity).
The model is `Model(type="mlflow_model", path=<folder>)`, so the workspace can deploy it to a
managed online endpoint without a scoring script. Idempotent: an existing version tagged with the
same pipeline run id is reused.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from maap_finetune.common.errors import UserError
from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import PIPELINE_RUN_TAG
from maap_finetune.registry.target import job_workspace


def job_credential(environ: Mapping[str, str] = os.environ):
    if environ.get("DEFAULT_IDENTITY_CLIENT_ID"):
        from azure.identity import ManagedIdentityCredential

        return ManagedIdentityCredential(client_id=environ["DEFAULT_IDENTITY_CLIENT_ID"])
    if environ.get("OBO_ENDPOINT"):
        from azure.ai.ml.identity import AzureMLOnBehalfOfCredential

        return AzureMLOnBehalfOfCredential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def job_ml_client(registry_name: str | None, environ: Mapping[str, str] = os.environ):
    """An MLClient for the job's workspace, or for the Azure ML registry `registry_name`."""
    from azure.ai.ml import MLClient

    credential = job_credential(environ)
    if registry_name:
        return MLClient(credential, registry_name=registry_name)
    ws = job_workspace(environ)
    return MLClient(credential, subscription_id=ws.subscription, resource_group_name=ws.resource_group,
                    workspace_name=ws.workspace)


def model_uri(name: str, version: str, registry_name: str | None) -> str:
    if registry_name:
        return f"azureml://registries/{registry_name}/models/{name}/versions/{version}"
    return f"azureml:{name}:{version}"


def find_version(ml_client, name: str, pipeline_run_id: str):
    from azure.core.exceptions import ResourceNotFoundError

    try:
        for model in ml_client.models.list(name=name):
            if (model.tags or {}).get(PIPELINE_RUN_TAG) == pipeline_run_id:
                return model
    except ResourceNotFoundError:
        return None
    return None


def register_azure(model_dir: Path, name: str, tags: dict[str, str], description: str,
                   registry_name: str | None, ml_client=None, model_type: str | None = None) -> ModelInfo:
    from azure.ai.ml.constants import AssetTypes
    from azure.ai.ml.entities import Model
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    target = "registry" if registry_name else "workspace"
    where = f"Azure ML registry {registry_name}" if registry_name else "the workspace"
    ml_client = ml_client or job_ml_client(registry_name)
    pipeline_run_id = tags[PIPELINE_RUN_TAG]
    try:
        existing = find_version(ml_client, name, pipeline_run_id)
        if existing is not None:
            return ModelInfo(
                registered=True, name=name, version=str(existing.version),
                uri=model_uri(name, str(existing.version), registry_name), target=target,
                pipeline_run_id=pipeline_run_id, created=False, tags=dict(existing.tags or {}),
                reason=f"already registered in {where} as version {existing.version} by pipeline run "
                f"{pipeline_run_id}; no new version created",
            )
        model = Model(name=name, path=str(model_dir), type=model_type or AssetTypes.MLFLOW_MODEL, tags=tags,
                      description=description)
        created = ml_client.models.create_or_update(model)
    except ClientAuthenticationError as err:
        raise UserError(
            f"the job's identity could not authenticate to register in {where}: {str(err).splitlines()[0]}. "
            "Give the compute a managed identity (or submit with identity: user_identity)"
        ) from None
    except HttpResponseError as err:
        if getattr(err, "status_code", None) in (401, 403):
            raise UserError(
                f"the job's identity may not register models in {where} (HTTP {err.status_code}); grant it the "
                "AzureML Data Scientist role (or a role with models/write)"
            ) from None
        raise
    return ModelInfo(
        registered=True, name=name, version=str(created.version),
        uri=model_uri(name, str(created.version), registry_name), target=target,
        pipeline_run_id=pipeline_run_id, created=True, tags=tags,
        reason=f"quality gate passed; registered in {where}",
    )

"""Register in the Azure ML workspace (or an Azure ML registry) from inside a pipeline job.

Uses only what the job has: its workspace from `AZUREML_ARM_*` (see `target.job_workspace`) and the
credential of the identity the pipeline gave the register node (`submit.py --register-identity`, passed as
`MAAP_JOB_IDENTITY`), chosen by `maap_finetune.common.identity.job_credential`, the one rule every step uses.

The model is `Model(type="mlflow_model")`, so the workspace can deploy it to a managed online endpoint
without a scoring script. Its path is Fine-Tune's output, `azureml://jobs/<job>/outputs/mlflow_model`
(`target.job_output_uri`), which the SDK passes on without uploading; a folder is uploaded only when
no such output is known (a model from elsewhere, the adapter-only package) or the target is a
registry (a registry cannot read a workspace's job output; the SDK copies the folder into it).
The version's lifecycle is `registry.lifecycle`: created tagged `maap_verified: false`, downloaded back
(`models.download`) into a scratch folder, its content hashed against the folder registered and loaded
with `check`, then marked verified (`models.get`, the tag set, `models.create_or_update` of that same
version: tags are a version's mutable part). A verified version of the same content (`content_sha256`)
or pipeline run is reused.

A 401/403 or a credential that gets no token, from building the client on, is one UserError naming
the identity and the role it lacks (`ROLES`, granted to the clusters by infra/main.bicep).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from maap_finetune.common.errors import UserError
from maap_finetune.common.identity import MANAGED, identity_mode, job_credential, job_identity
from maap_finetune.registry.lifecycle import load_mlflow_model, register_checked
from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import PIPELINE_RUN_TAG, VERIFIED_TAG
from maap_finetune.registry.target import job_workspace


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


class AzureVersions:
    """One model name in the workspace or registry behind `ml_client`, as `lifecycle.VersionStore`."""

    def __init__(self, ml_client, name: str, path: str, model_type: str, description: str):
        self.ml_client, self.name, self.path, self.model_type = ml_client, name, path, model_type
        self.description = description

    def versions(self):
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return [(str(m.version), dict(m.tags or {})) for m in self.ml_client.models.list(name=self.name)]
        except ResourceNotFoundError:  # no version of the name yet
            return []

    def create(self, tags: dict[str, str]) -> str:
        from azure.ai.ml.entities import Model

        model = Model(name=self.name, path=self.path, type=self.model_type, tags=tags, description=self.description)
        return str(self.ml_client.models.create_or_update(model).version)

    def download(self, version: str, scratch: Path) -> Path:
        # The SDK writes <download_path>/<name>/, with the stored folder's last segment inside for a folder.
        self.ml_client.models.download(name=self.name, version=version, download_path=str(scratch))
        folder = scratch / self.name
        while folder.is_dir() and len(entries := list(folder.iterdir())) == 1 and entries[0].is_dir():
            folder = entries[0]
        return folder

    def mark_verified(self, version: str) -> None:
        model = self.ml_client.models.get(name=self.name, version=version)
        model.tags = {**(model.tags or {}), VERIFIED_TAG: "true"}
        self.ml_client.models.create_or_update(model)


# The role each target needs (what infra/main.bicep grants the cluster identities).
ROLES = {"workspace": "AzureML Data Scientist", "registry": "AzureML Registry User"}


def _refused(err, target: str, where: str, scope: str, environ: Mapping[str, str]) -> UserError:
    from azure.core.exceptions import ClientAuthenticationError

    identity = job_identity(environ)
    managed = identity_mode(environ) == MANAGED
    fix = (f"grant that identity the {ROLES[target]!r} role on {scope} "
           + ("(infra/main.bicep grants it to the clusters it creates)" if managed else "(ask an owner to)")
           + f", or submit with --register-identity {'user' if managed else 'managed'}")
    first = (str(getattr(err, "message", None) or err).strip().splitlines() or [type(err).__name__])[0]
    if isinstance(err, ClientAuthenticationError):
        return UserError(f"Register could not get a token for {identity} to register in {where} ({first}); "
                         f"with --register-identity managed the cluster needs a managed identity; {fix}")
    return UserError(f"{identity} may not register models in {where} (HTTP {err.status_code}): {first}; {fix}")


def register_azure(model_dir: Path, name: str, tags: dict[str, str], description: str,
                   registry_name: str | None, check: Callable[[Path], object] = load_mlflow_model, ml_client=None,
                   source_uri: str | None = None, model_type: str | None = None,
                   environ: Mapping[str, str] = os.environ) -> ModelInfo:
    """Register `model_dir` (from `source_uri`, Fine-Tune's job output, when given) in the workspace or registry;
    `check` loads the downloaded copy before the version is marked verified."""
    from azure.ai.ml.constants import AssetTypes
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError

    target = "registry" if registry_name else "workspace"
    where = f"Azure ML registry {registry_name}" if registry_name else "the workspace"
    scope = f"the registry {registry_name!r}" if registry_name else "the workspace"
    path = source_uri if source_uri and not registry_name else str(model_dir)
    pipeline_run_id = tags[PIPELINE_RUN_TAG]
    try:
        ml_client = ml_client or job_ml_client(registry_name, environ)  # a registry client calls Azure already
        store = AzureVersions(ml_client, name, path, model_type or AssetTypes.MLFLOW_MODEL, description)
        done = register_checked(store, model_dir, tags, check, f"{name} in {where}")
    except ClientAuthenticationError as err:
        raise _refused(err, target, where, scope, environ) from None
    except HttpResponseError as err:
        if getattr(err, "status_code", None) in (401, 403):
            raise _refused(err, target, where, scope, environ) from None
        raise
    if done.created:
        source = f"from {path} (no upload)" if path == source_uri else f"uploaded from {path}"
        reason = f"quality gate passed; registered in {where} {source}, downloaded back and loaded"
    else:
        reason = (f"already registered in {where} as version {done.version} (the same weights and data, or pipeline "
                  f"run {pipeline_run_id}); no new version created")
    return ModelInfo(
        registered=True, name=name, version=done.version, uri=model_uri(name, done.version, registry_name),
        target=target, pipeline_run_id=pipeline_run_id, created=done.created, tags=done.tags, reason=reason,
    )

"""Secrets a step needs (today: the Hugging Face token for gated base models), from Azure Key Vault.

The pipeline carries only the secret's *name* (`MAAP_HF_TOKEN_SECRET`, set by `submit.py
--hf-token-secret`); the step reads the value at run time with the job's identity, as Azure ML's
docs prescribe for SDK v2 jobs (azure-keyvault-secrets + the job's credential). The value goes into
this process's `HF_TOKEN` only: never into arguments, YAML, logs or MLflow. The credential is
`maap_finetune.common.identity.job_credential`'s, as Register's.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping

from maap_finetune.common.errors import UserError
from maap_finetune.common.identity import job_credential

HF_TOKEN_SECRET_ENV = "MAAP_HF_TOKEN_SECRET"
KEY_VAULT_URL_ENV = "MAAP_KEY_VAULT_URL"
# Key Vault secret names: 1-127 letters, digits and dashes.
SECRET_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
_ARM_VARIABLES = ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME")


def check_secret_name(name: str, label: str = "--hf-token-secret") -> str:
    if not SECRET_NAME.match(name or ""):
        raise UserError(f"{label} {name!r}: a Key Vault secret name has 1-127 letters, digits and '-'")
    return name


def workspace_key_vault_url(credential, environ: MutableMapping[str, str] = os.environ) -> str:
    """The URL of the job's workspace's own Key Vault, from the AZUREML_ARM_* variables Azure ML sets."""
    missing = [name for name in _ARM_VARIABLES if not environ.get(name)]
    if missing:
        raise UserError(
            f"{HF_TOKEN_SECRET_ENV} is set but this is not an Azure ML job ({', '.join(missing)} unset): "
            f"set {KEY_VAULT_URL_ENV} to the vault's URL, or HF_TOKEN itself for a local run"
        )
    from azure.ai.ml import MLClient

    subscription, resource_group, workspace = (environ[name] for name in _ARM_VARIABLES)
    client = MLClient(credential, subscription_id=subscription, resource_group_name=resource_group, workspace_name=workspace)
    vault_id = client.workspaces.get(workspace).key_vault  # an ARM id ending in /vaults/<name>
    return f"https://{vault_id.rstrip('/').rsplit('/', 1)[-1]}.vault.azure.net/"


def load_hf_token(environ: MutableMapping[str, str] = os.environ, secret_client_factory=None) -> bool:
    """Put the named secret into `environ["HF_TOKEN"]`; True when a token is now set.

    Nothing to do without `MAAP_HF_TOKEN_SECRET`, or when HF_TOKEN is already set (a local run).
    """
    name = environ.get(HF_TOKEN_SECRET_ENV)
    if not name:
        return bool(environ.get("HF_TOKEN"))
    if environ.get("HF_TOKEN"):
        return True
    check_secret_name(name, HF_TOKEN_SECRET_ENV)
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError

    credential = job_credential(environ)
    try:
        vault_url = environ.get(KEY_VAULT_URL_ENV) or workspace_key_vault_url(credential, environ)
        if secret_client_factory is None:
            from azure.keyvault.secrets import SecretClient

            secret_client_factory = SecretClient
        value = secret_client_factory(vault_url=vault_url, credential=credential).get_secret(name).value
    except ResourceNotFoundError:
        raise UserError(f"Key Vault has no secret {name!r} (--hf-token-secret): create it with "
                        f"`az keyvault secret set --vault-name <vault> --name {name} --value <token>`") from None
    except (ClientAuthenticationError, HttpResponseError) as err:
        status = getattr(err, "status_code", None)
        raise UserError(
            f"cannot read Key Vault secret {name!r}" + (f" (HTTP {status})" if status else "")
            + ": the job's identity needs the 'Key Vault Secrets User' role on the vault"
        ) from None
    if not value:
        raise UserError(f"Key Vault secret {name!r} is empty")
    environ["HF_TOKEN"] = value
    return True

"""The credential a step uses inside an Azure ML job: one rule for every module that calls Azure (Register,
Export ONNX, the Key Vault read of `secrets`).

The pipeline knows which identity it gave a node (`submit.py --register-identity`), and says so in the node's
environment: `MAAP_JOB_IDENTITY` = `user` (the node runs with `identity: user_identity`) or `managed` (the
cluster's managed identity). The credential follows that, not the variables Azure ML happens to set: a
user-identity job can carry `DEFAULT_IDENTITY_CLIENT_ID` as well, which MSAL .NET's
MachineLearningManagedIdentitySource says "is always set in an Azure Machine Learning source" and uses for
system-assigned identities too (AzureAD/microsoft-authentication-library-for-dotnet
src/client/Microsoft.Identity.Client/ManagedIdentity/MachineLearningManagedIdentitySource.cs at
6c778d752849f0e5b3f9f5a6bf98d587cf016201), so "that variable is set" does not mean "this node is the cluster".

Without `MAAP_JOB_IDENTITY` (a component run on its own, or a node the pipeline gave no identity), the order is
Microsoft's own job code's, mldesigner's `_get_ml_client` as copied into promptflow (microsoft/promptflow
src/promptflow/promptflow/_cli/_utils.py at f1bb7be2b12b3eac86f0c38cdcd480264ba92a4b, "credential priority: OBO >
managed identity > default"): `AZUREML_OBO_ENABLED` -> the user's on-behalf-of credential, else
`DEFAULT_IDENTITY_CLIENT_ID` -> that managed identity, else `DefaultAzureCredential`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

IDENTITY_ENV = "MAAP_JOB_IDENTITY"
USER, MANAGED = "user", "managed"
OBO_ENABLED_ENV = "AZUREML_OBO_ENABLED"  # set by Azure ML when the job runs with the user's identity
CLIENT_ID_ENV = "DEFAULT_IDENTITY_CLIENT_ID"


def identity_mode(environ: Mapping[str, str] = os.environ) -> str | None:
    """`user`, `managed`, or None (no identity chosen for this node: the fallback order applies)."""
    from maap_finetune.common.errors import UserError

    mode = (environ.get(IDENTITY_ENV) or "").strip().lower() or None
    if mode not in (None, USER, MANAGED):
        raise UserError(f"{IDENTITY_ENV}={environ[IDENTITY_ENV]!r}: expected {USER} or {MANAGED} "
                        "(the pipeline sets it from submit.py --register-identity)")
    if mode is None:
        if environ.get(OBO_ENABLED_ENV):
            return USER
        if environ.get(CLIENT_ID_ENV):
            return MANAGED
    return mode


def job_credential(environ: Mapping[str, str] = os.environ):
    """The azure-identity credential of the identity this node was given (see the module docstring)."""
    mode = identity_mode(environ)
    if mode == USER:
        from azure.ai.ml.identity import AzureMLOnBehalfOfCredential

        return AzureMLOnBehalfOfCredential()
    if mode == MANAGED:
        from azure.identity import ManagedIdentityCredential

        client_id = environ.get(CLIENT_ID_ENV)
        return ManagedIdentityCredential(client_id=client_id) if client_id else ManagedIdentityCredential()
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential()


def job_identity(environ: Mapping[str, str] = os.environ) -> str:
    """The identity `job_credential` stands for, in the words of submit.py's flag (for error messages)."""
    mode = identity_mode(environ)
    if mode == MANAGED:
        return "the compute cluster's managed identity (--register-identity managed)"
    if mode == USER:
        return "the submitting user's identity (--register-identity user)"
    return "the job's default credential (no identity chosen for this step)"

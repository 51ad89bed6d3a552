"""One credential rule for every step that calls Azure (maap_finetune.common.identity): the identity the pipeline
gave the node, not whichever variables Azure ML happened to set. Jobs here carry both DEFAULT_IDENTITY_CLIENT_ID
and the on-behalf-of variables, as a user-identity job on a cluster with an identity does."""

from __future__ import annotations

from unittest import mock

import pytest

from maap_finetune.common import identity, secrets
from maap_finetune.registry import azure
from pipelines.definition.build import build_pipeline
from pipelines.definition.settings import PipelineSettings

BOTH = {"DEFAULT_IDENTITY_CLIENT_ID": "11111111-2222-3333-4444-555555555555", "AZUREML_OBO_ENABLED": "True",
        "OBO_ENDPOINT": "http://127.0.0.1:1/obo", "MSI_ENDPOINT": "http://127.0.0.1:1/msi"}
VAULT = {secrets.HF_TOKEN_SECRET_ENV: "hf-token", secrets.KEY_VAULT_URL_ENV: "https://kv.vault.azure.net/"}


def credential_types(environ):
    """The credential class Register and the Key Vault read each pick for `environ`."""
    from azure.keyvault.secrets import KeyVaultSecret, SecretClient, SecretProperties

    factory = mock.create_autospec(SecretClient)
    factory.return_value.get_secret.return_value = KeyVaultSecret(SecretProperties(), "hf_FAKE")
    secrets.load_hf_token({**environ, **VAULT}, secret_client_factory=factory)
    return type(azure.job_credential(environ)).__name__, type(factory.call_args.kwargs["credential"]).__name__


@pytest.mark.parametrize(("mode", "expected"), [("user", "AzureMLOnBehalfOfCredential"),
                                                ("managed", "ManagedIdentityCredential")])
def test_with_both_variables_set_the_node_identity_decides_in_both_modules(mode, expected):
    assert credential_types({**BOTH, identity.IDENTITY_ENV: mode}) == (expected, expected)


def test_a_managed_node_uses_the_clusters_client_id(monkeypatch):
    from azure.identity import ManagedIdentityCredential

    cls = mock.create_autospec(ManagedIdentityCredential)
    monkeypatch.setattr("azure.identity.ManagedIdentityCredential", cls)
    identity.job_credential({**BOTH, identity.IDENTITY_ENV: "managed"})
    cls.assert_called_once_with(client_id=BOTH["DEFAULT_IDENTITY_CLIENT_ID"])


def test_without_a_chosen_identity_obo_comes_first_as_in_microsofts_job_code():
    assert credential_types(BOTH) == ("AzureMLOnBehalfOfCredential",) * 2
    only_client_id = {"DEFAULT_IDENTITY_CLIENT_ID": BOTH["DEFAULT_IDENTITY_CLIENT_ID"]}
    assert credential_types(only_client_id) == ("ManagedIdentityCredential",) * 2
    assert type(identity.job_credential({})).__name__ == "DefaultAzureCredential"


def test_an_unknown_identity_value_is_a_user_error():
    from maap_finetune.common.errors import UserError

    with pytest.raises(UserError, match="MAAP_JOB_IDENTITY='service-principal': expected user or managed"):
        identity.job_credential({identity.IDENTITY_ENV: "service-principal"})


@pytest.mark.parametrize("mode", ["user", "managed"])
def test_the_pipeline_tells_the_registering_nodes_their_identity(mode):
    job = build_pipeline(PipelineSettings(require_training_data=False, compute="gpu-cluster", register_identity=mode,
                                          inputs={"model_name": "a/b"}))
    rest = job._to_rest_object().as_dict()["properties"]["jobs"]
    for step in ("register", "export_onnx"):
        assert rest[step]["environment_variables"][identity.IDENTITY_ENV] == mode
    assert all(identity.IDENTITY_ENV not in (rest[s].get("environment_variables") or {})
               for s in ("data_prep", "finetune", "evaluate"))

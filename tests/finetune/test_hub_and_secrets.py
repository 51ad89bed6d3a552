"""A Hub model id that cannot be fetched is one clear line (exit 2, no traceback), and a gated model's token
comes from Key Vault by name, never into arguments, YAML or logs.

The Hub is played by a loopback HTTP server answering as huggingface.co does (status + X-Error-Code),
so the real huggingface_hub client and its error mapping run; Key Vault by an autospec'd SecretClient.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest

from maap_finetune.common import secrets
from maap_finetune.common.errors import UserError
from maap_finetune.models.hub import fetch_hub_model
from maap_finetune.models.source import resolve_model_source
from tests.helpers import REPO_ROOT, argv_from_spec


@contextmanager
def fake_hub(status: int, error_code: str | None):
    """A loopback server answering every request with `status` and the Hub's X-Error-Code header."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self):
            self.send_response(status)
            if error_code:
                self.send_header("X-Error-Code", error_code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(b"{}")

        do_GET = do_HEAD = _answer

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"  # nothing listens once the socket closes


@pytest.fixture
def hub_at(monkeypatch, tmp_path):
    """Point huggingface_hub at `url` with an empty cache and short timeouts."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv(secrets.HF_TOKEN_SECRET_ENV, raising=False)

    def point(url: str):
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    return point


@pytest.mark.parametrize(
    "status, code, reason",
    [
        (401, "GatedRepo", "the model is gated and this token has not been granted access"),
        (404, "RepoNotFound", "no such model, or it is private or gated"),
    ],
)
def test_gated_and_missing_models_are_one_clear_error(hub_at, status, code, reason):
    with fake_hub(status, code) as url:
        hub_at(url)
        with pytest.raises(UserError) as caught:
            fetch_hub_model(resolve_model_source(None, "org/some-model"))
    message = str(caught.value)
    assert message.startswith("cannot fetch base model 'org/some-model' from the Hugging Face Hub: " + reason), message
    assert "--hf-token-secret" in message and "model_path" in message


def test_an_unreachable_hub_is_one_clear_error(hub_at):
    hub_at(closed_port_url())
    with pytest.raises(UserError, match="the Hub cannot be reached .* not in the local cache"):
        fetch_hub_model(resolve_model_source(None, "org/some-model"))


def test_offline_mode_is_named(hub_at, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="HF_HUB_OFFLINE is set"):
        fetch_hub_model(resolve_model_source(None, "org/some-model"))


def test_a_local_folder_is_not_fetched(tiny_model_dir):
    source = resolve_model_source(tiny_model_dir, None)
    assert fetch_hub_model(source) is source


@pytest.mark.slow
def test_finetune_step_with_an_unreachable_hub_model_exits_2_without_a_traceback(tmp_path, prepared_chat):
    """What the local run's step log shows: one `error:` line naming the model and the fix."""
    env = {
        **os.environ,
        "HF_ENDPOINT": closed_port_url(),
        "HF_HUB_CACHE": str(tmp_path / "hub-cache"),
        "HF_HUB_ETAG_TIMEOUT": "2",
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("HF_HUB_OFFLINE", None)
    out = tmp_path / "out"
    argv = argv_from_spec(
        "finetune", train_data=prepared_chat, model_name="microsoft/Phi-3-mini-4k-instruct",
        adapter=out / "a", mlflow_model=out / "m", checkpoints=out / "c",
    )
    done = subprocess.run(
        [sys.executable, str(REPO_ROOT / "components" / "finetune" / "finetune.py"), *argv],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot fetch base model 'microsoft/Phi-3-mini-4k-instruct'" in errors[0], done.stderr


# ---------------------------------------------------------------------------------------------
# The token: from Key Vault, by name


def secret_client(value: str | None = "hf_FAKE_token_value", error: Exception | None = None):
    from azure.keyvault.secrets import KeyVaultSecret, SecretClient, SecretProperties

    factory = mock.create_autospec(SecretClient)
    client = factory.return_value
    if error is not None:
        client.get_secret.side_effect = error
    else:
        client.get_secret.return_value = KeyVaultSecret(SecretProperties(), value)
    return factory


VAULT = {secrets.HF_TOKEN_SECRET_ENV: "hf-token", secrets.KEY_VAULT_URL_ENV: "https://kv.vault.azure.net/"}


def test_the_named_secret_becomes_hf_token_in_this_process_only():
    environ = dict(VAULT)
    factory = secret_client()
    with mock.patch.object(secrets, "job_credential", return_value="credential"):
        assert secrets.load_hf_token(environ, secret_client_factory=factory) is True
    assert environ["HF_TOKEN"] == "hf_FAKE_token_value"
    factory.assert_called_once_with(vault_url="https://kv.vault.azure.net/", credential="credential")
    factory.return_value.get_secret.assert_called_once_with("hf-token")


def test_an_hf_token_already_set_wins_and_no_secret_means_nothing_to_do():
    factory = secret_client()
    assert secrets.load_hf_token({**VAULT, "HF_TOKEN": "mine"}, factory) is True
    assert secrets.load_hf_token({}, factory) is False
    factory.assert_not_called()


def test_key_vault_refusals_are_one_clear_error():
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    with mock.patch.object(secrets, "job_credential", return_value="credential"):
        with pytest.raises(UserError, match="Key Vault has no secret 'hf-token'.*az keyvault secret set"):
            secrets.load_hf_token(dict(VAULT), secret_client(error=ResourceNotFoundError("gone")))
        forbidden = HttpResponseError("Forbidden")
        forbidden.status_code = 403
        with pytest.raises(UserError, match=r"\(HTTP 403\).*'Key Vault Secrets User'"):
            secrets.load_hf_token(dict(VAULT), secret_client(error=forbidden))


def test_outside_azure_ml_a_vault_url_is_needed():
    with mock.patch.object(secrets, "job_credential", return_value="credential"):
        with pytest.raises(UserError, match="not an Azure ML job .* set MAAP_KEY_VAULT_URL"):
            secrets.load_hf_token({secrets.HF_TOKEN_SECRET_ENV: "hf-token"}, secret_client())


def test_the_workspace_vault_is_found_from_the_job_variables():
    from azure.ai.ml.entities import Workspace
    from azure.ai.ml.operations import WorkspaceOperations

    environ = {"AZUREML_ARM_SUBSCRIPTION": "sub", "AZUREML_ARM_RESOURCEGROUP": "rg", "AZUREML_ARM_WORKSPACE_NAME": "ws"}
    vault_id = "/subscriptions/sub/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-maap-1"
    with mock.patch("azure.ai.ml.MLClient", autospec=True) as client_cls:
        client_cls.return_value.workspaces = mock.create_autospec(WorkspaceOperations, instance=True)
        client_cls.return_value.workspaces.get.return_value = Workspace(name="ws", key_vault=vault_id)
        assert secrets.workspace_key_vault_url("credential", environ) == "https://kv-maap-1.vault.azure.net/"
    client_cls.assert_called_once_with("credential", subscription_id="sub", resource_group_name="rg", workspace_name="ws")
    client_cls.return_value.workspaces.get.assert_called_once_with("ws")


def test_a_gated_model_fetch_uses_the_token_from_key_vault(hub_at, monkeypatch):
    """The token reaches the Hub request as a bearer token, fetched by name just before the download."""
    seen: list[str | None] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub_at(f"http://127.0.0.1:{server.server_address[1]}")
        for name, value in VAULT.items():
            monkeypatch.setenv(name, value)
        with mock.patch.object(secrets, "job_credential", return_value="credential"), \
             mock.patch("azure.keyvault.secrets.SecretClient", secret_client()):
            with pytest.raises(UserError):
                fetch_hub_model(resolve_model_source(None, "org/gated-model"))
    finally:
        server.shutdown()
        server.server_close()
    assert seen and all(header == "Bearer hf_FAKE_token_value" for header in seen), seen

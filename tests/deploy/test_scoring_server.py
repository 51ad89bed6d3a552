"""The request deploy.py prints gets HTTP 200 and a chat answer from Azure ML's inference server.

`azmlinfsrv` (azureml-inference-server-http, the server Azure ML runs in every online deployment)
serves pipelines/scoring/score.py with a tiny MLflow llm/v1/chat model laid out as Azure mounts it
(AZUREML_MODEL_DIR/<model folder>). The server's pinned dependencies (opentelemetry 1.33) clash
with the project's, so it lives in its own venv under .maap/ that sees the project's packages
through a .pth file (installed from the index on first use; the deployment image installs the
same pin from environments/train-gpu). Skipped when it cannot be installed, except under CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import pytest

from pipelines import deploy
from tests.helpers import REPO_ROOT

VENV = REPO_ROOT / ".maap" / "azmlinfsrv-venv"
GPU_PINS = REPO_ROOT / "environments" / "train-gpu" / "context" / "requirements.txt"
# azure-monitor-opentelemetry must come from the same venv as its exporter (a namespace package);
# 1.6.7 is what pip resolves beside opentelemetry 1.33 for the pinned image stack.
EXTRA = ["azure-monitor-opentelemetry==1.6.7"]

pytestmark = pytest.mark.slow


def _server_pin() -> str:
    for line in GPU_PINS.read_text().splitlines():
        if line.startswith("azureml-inference-server-http=="):
            return line.strip()
    raise AssertionError(f"{GPU_PINS} pins no azureml-inference-server-http")


def _ensure_server() -> Path:
    wanted = " ".join([_server_pin(), *EXTRA])
    stamp = VENV / ".maap-stamp"
    # The venv's scripts carry its absolute path in their shebangs: a venv made elsewhere is rebuilt.
    digest = hashlib.sha256(f"{wanted} {sys.prefix} {VENV}".encode()).hexdigest()
    server = VENV / "bin" / "azmlinfsrv"
    if server.exists() and stamp.exists() and stamp.read_text() == digest:
        return server
    venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    site = next((VENV / "lib").glob("python3*/site-packages"))
    (site / "zz_project_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    proc = subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", *wanted.split()],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip()[-1500:])
    stamp.write_text(digest)
    return server


@pytest.fixture(scope="module")
def server_bin():
    try:
        return _ensure_server()
    except (RuntimeError, OSError) as err:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"could not install azmlinfsrv: {err}")
        pytest.skip(f"azmlinfsrv not installable here: {err}")


@pytest.fixture(scope="module")
def served(server_bin, tiny_model_dir, tmp_path_factory):
    """azmlinfsrv serving score.py with a tiny chat model; yields the scoring URL."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.mlflow_model import save_mlflow_model

    model_dir = tmp_path_factory.mktemp("azureml-models") / "maap-finetuned" / "1"
    save_mlflow_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                      model_dir / "mlflow_model")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        health_port = sock.getsockname()[1]
    env = {**os.environ, "AZUREML_MODEL_DIR": str(model_dir), "PATH": f"{server_bin.parent}:{os.environ['PATH']}"}
    log_path = model_dir.parent / "azmlinfsrv.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(server_bin), "--entry_script", str(deploy.SCORING_DIR / "score.py"),
                                   "--model_dir", str(model_dir), "--port", str(port), "--health_port", str(health_port)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, log_path.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, OSError):
                assert time.monotonic() < deadline, "azmlinfsrv did not answer within 120 s"
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/score", log_path
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def _post(url: str, body) -> tuple[int, object]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def test_the_printed_request_gets_a_chat_answer(served):
    url, log = served
    status, answer = _post(url, deploy.SAMPLE_REQUEST)
    assert status == 200, log.read_text()[-3000:]
    [completion] = answer
    assert completion["object"] == "chat.completion"
    message = completion["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str) and message["content"]
    assert completion["usage"]["completion_tokens"] > 0


def test_a_request_without_input_data_is_a_400_with_the_fix(served):
    url, _ = served
    status, answer = _post(url, deploy.SAMPLE_REQUEST["input_data"])  # the bare OpenAI-style body
    assert status == 400
    assert '"input_data"' in answer["error"]



def test_temperature_zero_is_accepted_and_answers_are_deterministic(served):
    """OpenAI-style clients send temperature 0 for a deterministic answer; sampling refused it (HTTP 500)."""
    url, log = served
    data = {"messages": [{"role": "user", "content": "Do you sell helmets?"}], "max_tokens": 16}
    answers = []
    for request in (data, data, {**data, "temperature": 0}):
        status, answer = _post(url, {"input_data": request})
        assert status == 200, log.read_text()[-3000:]
        answers.append(answer[0]["choices"][0]["message"]["content"])
    assert answers[0] == answers[1] == answers[2]

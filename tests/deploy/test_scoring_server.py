"""The request deploy.py prints gets HTTP 200 and a chat answer from Azure ML's inference server.

`azmlinfsrv` (azureml-inference-server-http, the server Azure ML runs in every online deployment)
serves pipelines/scoring/score.py with a tiny MLflow llm/v1/chat model laid out as Azure mounts it
(AZUREML_MODEL_DIR/<model folder>). The server's pinned dependencies (opentelemetry 1.33) clash
with the project's, so it lives in its own venv under .maap/ that sees the project's packages
through a .pth file (installed from the index on first use; the deployment image installs the
same pin from environments/train-gpu). Skipped when it cannot be installed, except under CI=true.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
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
def model_dir(tiny_model_dir, tmp_path_factory):
    """A tiny chat model laid out as Azure mounts it: AZUREML_MODEL_DIR/<model folder>."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.mlflow_model import save_mlflow_model

    model_dir = tmp_path_factory.mktemp("azureml-models") / "maap-finetuned" / "1"
    save_mlflow_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir),
                      model_dir / "mlflow_model")
    return model_dir


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _serve(server_bin: Path, model_dir: Path, environment: dict[str, str], name: str):
    """azmlinfsrv serving score.py with the deployment's environment variables; yields (scoring URL, log)."""
    port = _free_port()
    env = {**os.environ, **environment, "AZUREML_MODEL_DIR": str(model_dir),
           "PATH": f"{server_bin.parent}:{os.environ['PATH']}"}
    log_path = model_dir.parent / f"azmlinfsrv-{name}.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([str(server_bin), "--entry_script", str(deploy.SCORING_DIR / "score.py"),
                                   "--model_dir", str(model_dir), "--port", str(port)],
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
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a request still generating holds gunicorn's graceful stop
            os.killpg(server.pid, 9)
            server.wait(timeout=30)


@pytest.fixture(scope="module")
def served(server_bin, model_dir):
    """The server as deploy.py configures a deployment (request timeout: Azure's maximum)."""
    with _serve(server_bin, model_dir, deploy.server_environment(deploy.MAX_REQUEST_TIMEOUT_MS), "default") as served:
        yield served


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


def _post_raw(url: str, data: bytes) -> tuple[int, object]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _chat(**fields) -> dict:
    return {"input_data": {"messages": [{"role": "user", "content": "Hi"}], **fields}}


def _messages(*messages) -> dict:
    return {"input_data": {"messages": list(messages)}}


USER = {"role": "user", "content": "Hi"}
# (case, request body as bytes, the field the 400 must name)
BAD_REQUESTS = [
    ("input_data null", {"input_data": None}, "input_data"),
    ("input_data a string", {"input_data": "Hi"}, "input_data"),
    ("input_data a list", {"input_data": [USER]}, "input_data"),
    ("input_data a number", {"input_data": 3}, "input_data"),
    ("messages missing", {"input_data": {"max_tokens": 4}}, "input_data.messages"),
    ("messages empty", _messages(), "input_data.messages"),
    ("messages a string", {"input_data": {"messages": "Hi"}}, "input_data.messages"),
    ("content missing", _messages({"role": "user"}), "input_data.messages[0].content"),
    ("content numeric", _messages({"role": "user", "content": 3}), "input_data.messages[0].content"),
    ("content null", _messages({"role": "user", "content": None}), "input_data.messages[0].content"),
    ("role numeric", _messages({"role": 1, "content": "Hi"}), "input_data.messages[0].role"),
    ("role unknown", _messages({"role": "robot", "content": "Hi"}), "input_data.messages[0].role"),
    ("assistant only", _messages({"role": "assistant", "content": "Hello"}), "input_data.messages[0].role"),
    ("unknown field", _chat(colour="red"), "input_data.colour"),
    ("unknown message field", _messages({**USER, "mood": "happy"}), "input_data.messages[0].mood"),
    ("max_tokens negative", _chat(max_tokens=-1), "input_data.max_tokens"),
    ("max_tokens zero", _chat(max_tokens=0), "input_data.max_tokens"),
    ("max_tokens a string", _chat(max_tokens="8"), "input_data.max_tokens"),
    ("max_tokens a float", _chat(max_tokens=2.5), "input_data.max_tokens"),
    ("max_tokens 1e9", _chat(max_tokens=1e9), "input_data.max_tokens"),
    ("max_tokens NaN", b'{"input_data": {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": NaN}}', "NaN"),
    ("temperature negative", _chat(temperature=-0.5), "input_data.temperature"),
    ("temperature a string", _chat(temperature="hot"), "input_data.temperature"),
    ("params unknown field", {**_chat(), "params": {"colour": 1}}, "params.colour"),
    ("lone surrogate", b'{"input_data": {"messages": [{"role": "user", "content": "a\\ud800b"}]}}',
     "input_data.messages[0].content"),
    ("nested 5,000 deep", b'{"input_data": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested too deeply"),
    ("nested 100,000 deep", b'{"input_data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
]


@pytest.mark.parametrize("body, field", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_a_malformed_request_is_a_400_naming_the_field(served, body, field):
    url, log = served
    status, answer = _post_raw(url, body if isinstance(body, bytes) else json.dumps(body).encode())
    assert status == 400, (answer, log.read_text()[-2000:])
    assert field in answer["error"] and "Traceback" not in answer["error"]


def test_prompt_and_max_tokens_must_fit_the_context(served):
    url, _ = served
    status, answer = _post(url, _chat(max_tokens=4096))  # the tiny model's context is 4,096 tokens
    assert status == 400
    assert "max_tokens is 4096" in answer["error"] and "context of 4096 tokens" in answer["error"]
    long_prompt = {"input_data": {"messages": [{"role": "user", "content": "bike " * 8000}], "max_tokens": 4}}
    started = time.monotonic()
    status, answer = _post(url, long_prompt)
    assert status == 400 and "context is 4096 tokens" in answer["error"], answer
    assert time.monotonic() - started < 10  # refused before generation
    prompt = int(answer["error"].split("the prompt is ")[1].split()[0])
    assert prompt > 4096
    status, answer = _post(url, _chat(max_tokens=2))
    assert status == 200 and answer[0]["usage"]["completion_tokens"] <= 2


def _raw_http(port: int, head: bytes, timeout: float = 10) -> bytes:
    """The whole reply: headers and the body their Content-Length declares (they can come in separate packets)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
        except BrokenPipeError:  # the server may answer and close before a long body is all sent
            pass
        reply = b""
        while True:
            header_end = reply.find(b"\r\n\r\n")
            if header_end >= 0:
                declared = re.search(rb"(?im)^content-length:\s*(\d+)", reply[:header_end])
                if declared is None or len(reply) >= header_end + 4 + int(declared.group(1)):
                    return reply
            try:
                more = sock.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return reply
            if not more:
                return reply
            reply += more


def test_a_body_over_the_cap_is_413_before_it_is_read(served):
    url, log = served
    port = int(url.split(":")[2].split("/")[0])
    # A client that declares 20 MB and sends none of it is answered at once: the body is never read.
    started = time.monotonic()
    reply = _raw_http(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 20000000\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    assert b"at most 1000000 bytes" in reply and time.monotonic() - started < 5
    # A chunked body (no declared length) is read only up to the cap.
    chunk = b"x" * 1_100_000
    reply = _raw_http(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Transfer-Encoding: chunked\r\n\r\n" + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 413"), reply[:300]
    status, _ = _post(url, deploy.SAMPLE_REQUEST)  # the server carries on
    assert status == 200


@pytest.fixture(scope="module")
def served_short(server_bin, model_dir):
    """A deployment with a 5 s request timeout and a 4 KB body cap."""
    with _serve(server_bin, model_dir, deploy.server_environment(5000, max_request_bytes=4096), "short") as served:
        yield served


def test_probes_answer_during_a_long_request_and_generation_stops_at_the_timeout(served_short):
    import threading

    url, log = served_short
    probe_url = url.rsplit("/", 1)[0] + "/"
    result = {}

    def long_request():
        started = time.monotonic()
        result["answer"] = _post(url, _chat(max_tokens=4000))
        result["seconds"] = time.monotonic() - started

    worker = threading.Thread(target=long_request)
    worker.start()
    time.sleep(0.5)
    probes = []
    while worker.is_alive() and len(probes) < 100:
        started = time.monotonic()
        with urllib.request.urlopen(probe_url, timeout=5) as response:
            assert response.status == 200
        probes.append(time.monotonic() - started)
        time.sleep(0.2)
    worker.join(timeout=60)
    status, answer = result["answer"]
    assert status == 504 and "request timeout of 5000 ms" in answer["error"], answer
    assert result["seconds"] < 15, result  # generation stopped at the timeout, not at 4,000 tokens
    assert len(probes) >= 5 and max(probes) < 2, probes
    # The cap is the deployment's setting (MAAP_MAX_REQUEST_BYTES=4096 here).
    status, answer = _post(url, _chat(max_tokens=2, stop=["x" * 5000]))
    assert status == 413 and "at most 4096 bytes" in answer["error"]

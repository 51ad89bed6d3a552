"""Register on a real local MLflow registry; the Azure path against a fake MLClient; the gate blocks."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from maap_finetune.common.errors import UserError
from tests.helpers import argv_from_spec, load_entry


def step_run_in_pipeline(monkeypatch, parent_id: str | None = None) -> tuple[str, str]:
    """A pipeline run and a child step run, with MLFLOW_RUN_ID set as the local runner sets it."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment = client.get_experiment_by_name("maap-finetune") or client.get_experiment(
        client.create_experiment("maap-finetune"))
    if parent_id is None:
        parent_id = client.create_run(experiment.experiment_id, run_name="pipeline").info.run_id
    child = client.create_run(experiment.experiment_id, run_name="register", tags={"mlflow.parentRunId": parent_id})
    monkeypatch.setenv("MLFLOW_RUN_ID", child.info.run_id)
    return parent_id, child.info.run_id


def register(tmp_path, mlflow_model, evaluation, out="registration", **values):
    argv = argv_from_spec("register", mlflow_model=mlflow_model, evaluation=evaluation,
                          registration=tmp_path / out, **values)
    info = load_entry("register").main(argv)
    written = json.loads((tmp_path / out / "model_info.json").read_text())
    assert written["registered"] == info.registered and written["reason"] == info.reason
    return written


def end_active_run():
    import mlflow

    while mlflow.active_run():
        mlflow.end_run()


def test_failing_gate_registers_nothing(tmp_path, mlflow_tracking, monkeypatch, capsys, untrained_mlflow_model,
                                        evaluation_failed):
    from mlflow import MlflowClient

    step_run_in_pipeline(monkeypatch)
    info = register(tmp_path, untrained_mlflow_model, evaluation_failed)
    decision = json.loads((evaluation_failed / "decision.json").read_text())
    assert info["registered"] is False and info["version"] is None and info["uri"] is None
    assert info["reason"] == decision["reason"] and info["reason"].startswith("quality gate failed: loss")
    assert MlflowClient().search_registered_models() == []
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[register]")]
    assert lines == [f"[register] model not registered: {decision['reason']}"]


def test_passing_gate_registers_once_per_pipeline_run_and_the_model_answers(
    tmp_path, mlflow_tracking, monkeypatch, finetuned_mlflow_model, evaluation_passed
):
    import mlflow
    from mlflow import MlflowClient

    parent_id, step_id = step_run_in_pipeline(monkeypatch)
    info = register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    end_active_run()
    assert info["registered"] is True and info["created"] is True
    assert (info["name"], info["version"], info["uri"]) == ("maap-finetuned", "1", "models:/maap-finetuned/1")
    assert info["target"] == "mlflow" and info["pipeline_run_id"] == parent_id

    client = MlflowClient()
    version = client.get_model_version("maap-finetuned", "1")
    metrics = json.loads((evaluation_passed / "metrics.json").read_text())
    assert version.run_id == step_id
    assert version.source.endswith(f"{step_id}/artifacts/mlflow_model")
    assert version.tags["pipeline_run_id"] == parent_id
    assert version.tags["base_model"] == "tiny-phi3" and version.tags["peft_method"] == "none"
    assert version.tags["dataset_sha256"] == metrics["lineage"]["dataset_sha256"]
    assert float(version.tags["test_loss"]) == pytest.approx(metrics["finetuned"]["loss"], rel=1e-5)
    assert version.tags["quality_gate"] == "passed"
    assert version.tags["model_size_bytes"] == str(apparent_size(finetuned_mlflow_model))  # deploy.py sizes VMs by it
    assert "fine-tuned with none on chat data" in version.description

    chat = mlflow.pyfunc.load_model("models:/maap-finetuned/1")
    answer = chat.predict({"messages": [{"role": "user", "content": "How many gears does the Pebble Kids have?"}],
                           "max_tokens": 12})
    assert answer[0]["choices"][0]["message"]["role"] == "assistant"
    assert answer[0]["choices"][0]["message"]["content"].strip()

    # A retry of the step in the same pipeline run registers nothing new.
    step_run_in_pipeline(monkeypatch, parent_id=parent_id)
    again = register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    end_active_run()
    assert again["registered"] is True and again["created"] is False and again["version"] == "1"
    assert "no new version created" in again["reason"]
    assert len(client.search_model_versions("name = 'maap-finetuned'")) == 1

    assert client.get_model_version("maap-finetuned", "1").tags["maap_verified"] == "true"

    # Another pipeline run on the same weights and data is the same content: no duplicate version.
    step_run_in_pipeline(monkeypatch)
    rerun = register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="rerun")
    end_active_run()
    assert rerun["version"] == "1" and rerun["created"] is False
    assert len(client.search_model_versions("name = 'maap-finetuned'")) == 1


def test_a_version_is_unverified_until_it_loads_back_and_readers_refuse_it(
    tmp_path, mlflow_tracking, monkeypatch, finetuned_mlflow_model, evaluation_passed
):
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from maap_finetune.common.errors import UserError
    from pipelines import deploy
    from pipelines.local import summary

    def does_not_load(uri, *args, **kwargs):
        raise OSError(f"{uri}: the uploaded weights are truncated")

    step_run_in_pipeline(monkeypatch)
    with monkeypatch.context() as patch:
        patch.setattr(mlflow.pyfunc, "load_model", does_not_load)
        with pytest.raises(OSError, match="truncated"):
            register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    end_active_run()
    client = MlflowClient()
    first = client.get_model_version("maap-finetuned", "1")
    assert first.tags["maap_verified"] == "false"

    # Readers refuse it: the run summary, Export ONNX's read of the registration, deploy.py.
    info = {"registered": True, "name": "maap-finetuned", "version": "1", "uri": "models:/maap-finetuned/1",
            "tags": dict(first.tags)}
    (tmp_path / "registration").mkdir(exist_ok=True)
    (tmp_path / "registration" / "model_info.json").write_text(json.dumps(info))
    [line] = summary.model_info_lines(tmp_path / "registration" / "model_info.json")
    assert line.startswith("model not verified: models:/maap-finetuned/1")
    from maap_finetune.export.registration import source_model

    with pytest.raises(UserError, match="not verified"):
        source_model(tmp_path / "registration")

    from tests.azure_fakes import ModelStore, fake_ml_client

    workspace = fake_ml_client()  # the version as an Azure workspace would hold it, with these tags
    ModelStore(workspace.models, "model_maap-finetuned_1").payloads[0]["properties"]["tags"] = dict(first.tags)
    with pytest.raises(UserError, match="not verified"):
        deploy.model_reference(workspace, "maap-finetuned", "1", None)

    # The rerun does not reuse the unverified version: it registers and verifies a new one.
    step_run_in_pipeline(monkeypatch)
    again = register(tmp_path, finetuned_mlflow_model, evaluation_passed, out="again")
    end_active_run()
    assert again["version"] == "2" and again["created"] is True
    assert client.get_model_version("maap-finetuned", "2").tags["maap_verified"] == "true"


def apparent_size(folder) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_registered_model_serves_chat_over_http(tmp_path, mlflow_tracking, monkeypatch, finetuned_mlflow_model,
                                                 evaluation_passed):
    step_run_in_pipeline(monkeypatch)
    info = register(tmp_path, finetuned_mlflow_model, evaluation_passed)
    end_active_run()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    port = _free_port()
    # `mlflow models serve` execs `uvicorn` through bash: the venv's bin must be on PATH even when the
    # tests run as `.venv/bin/python -m pytest` without an activated venv (as `make test` does).
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_tracking, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("MLFLOW_RUN_ID", None)
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [mlflow_cli, "models", "serve", "-m", info["uri"], "--env-manager", "local", "-h", "127.0.0.1",
         "-p", str(port), "-w", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "mlflow models serve did not answer /ping within 120 s"
            time.sleep(0.5)
        body = json.dumps({"messages": [{"role": "user", "content": "What is the warranty on a new bike?"}],
                           "max_tokens": 8}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            assert response.status == 200
            payload = json.loads(response.read())
        completion = payload[0] if isinstance(payload, list) else payload
        assert completion["object"] == "chat.completion"
        assert completion["choices"][0]["message"]["content"].strip()
    finally:
        _stop_process_group(server)
        log.close()


def _stop_process_group(server: subprocess.Popen) -> None:
    """SIGTERM the server's process group, SIGKILL it after 15 s; a group already gone is fine."""
    for signal_number in (15, 9):
        try:
            os.killpg(server.pid, signal_number)
        except ProcessLookupError:
            break
        try:
            server.wait(timeout=15)
            break
        except subprocess.TimeoutExpired:
            continue
    server.wait(timeout=15)


def test_registry_name_is_refused_locally(tmp_path, mlflow_tracking, finetuned_mlflow_model, evaluation_passed):
    with pytest.raises(UserError, match="only an Azure ML job can write to"):
        register(tmp_path, finetuned_mlflow_model, evaluation_passed, registry_name="shared-models")


def test_bad_inputs_are_reported_together(tmp_path, finetuned_mlflow_model):
    argv = argv_from_spec("register", mlflow_model=finetuned_mlflow_model, evaluation=tmp_path,
                          registration=tmp_path / "r", registered_model_name="bad name!", registry_name="x")
    with pytest.raises(UserError) as err:
        load_entry("register").parse_args(argv)
    message = str(err.value)
    for fragment in ("--registered_model_name 'bad name!'", "--registry_name 'x'", "decision.json is missing",
                     "metrics.json is missing"):
        assert fragment in message


def test_chat_model_without_chat_template_is_refused(tmp_path, mlflow_tracking, finetuned_mlflow_model,
                                                    evaluation_passed):
    copy = tmp_path / "model"
    shutil.copytree(finetuned_mlflow_model, copy)
    tokenizer_dir = copy / "components" / "tokenizer"
    (tokenizer_dir / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tokenizer_dir / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="lacks a chat template in components/tokenizer"):
        register(tmp_path, copy, evaluation_passed)


def test_model_without_signature_is_refused(tmp_path, mlflow_tracking, finetuned_mlflow_model, evaluation_passed):
    import yaml

    copy = tmp_path / "model"
    shutil.copytree(finetuned_mlflow_model, copy)
    mlmodel = yaml.safe_load((copy / "MLmodel").read_text())
    mlmodel.pop("signature")
    (copy / "MLmodel").write_text(yaml.safe_dump(mlmodel))
    with pytest.raises(UserError, match="lacks a signature"):
        register(tmp_path, copy, evaluation_passed)


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter on the tiny base, as Fine-Tune writes it; B is random so the adapter changes the outputs."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["qkv_proj", "o_proj"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    folder = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_adapter_format_registers_the_adapter_alone_and_loads_right(
    tmp_path, mlflow_tracking, monkeypatch, tiny_model_dir, lora_adapter, finetuned_mlflow_model, evaluation_passed
):
    import mlflow
    import torch
    from mlflow import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    step_run_in_pipeline(monkeypatch)
    info = register(tmp_path, finetuned_mlflow_model, evaluation_passed, model_format="adapter",
                    adapter=lora_adapter, model_path=tiny_model_dir)
    end_active_run()
    assert info["registered"] is True and info["tags"]["model_format"] == "adapter"
    version = MlflowClient().get_model_version(info["name"], info["version"])
    local = mlflow.artifacts.download_artifacts(version.source, dst_path=str(tmp_path / "downloaded"))
    files = {p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file()}
    assert "peft/adapter_model.safetensors" in files
    # The tag is the folder Register packaged: what the registry stores, less the file MLflow adds to it when a
    # models:/ URI is loaded from the store itself (the load-back check loads a downloaded copy instead).
    meta = Path(local) / "registered_model_meta"
    stored = apparent_size(local) - (os.path.getsize(meta) if meta.exists() else 0)
    assert info["tags"]["model_size_bytes"] == str(stored)
    assert not any(f.startswith("model/") for f in files)  # no base weights stored

    loaded = mlflow.transformers.load_model(info["uri"], return_type="components")["model"]
    expected = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(lora_adapter))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 4, 50, 60, 70, 6, 5]])
    with torch.no_grad():
        got, want, plain = (m.eval()(input_ids=ids).logits for m in (loaded, expected, base))
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter is applied, not dropped


def test_adapter_format_needs_its_inputs(tmp_path, finetuned_mlflow_model, evaluation_passed):
    argv = argv_from_spec("register", mlflow_model=finetuned_mlflow_model, evaluation=evaluation_passed,
                          registration=tmp_path / "r", model_format="adapter")
    with pytest.raises(UserError) as err:
        load_entry("register").parse_args(argv)
    assert "needs --adapter" in str(err.value) and "exactly one base model" in str(err.value)

"""Smoke tier: the README's default local run, end to end, as a user runs it.

One real run of `python pipelines/submit.py --local` in a fresh working folder: tiny Phi-3 model
built locally, sample data, LoRA on the CPU, evaluate, register in a local MLflow registry, export to
ONNX Runtime GenAI (int4, fp32 parity checked). Then the registered model is loaded from its
`model_uri` and answers a chat request, and so does the exported one from its `onnx_model` URI.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers import run_local_pipeline

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local-run")
    return workdir, run_local_pipeline(workdir)


def _summary_value(stdout: str, key: str) -> str:
    match = re.search(rf"^{key}: (\S+)$", stdout, flags=re.MULTILINE)
    assert match, f"no '{key}:' line in the run summary:\n{stdout[-2000:]}"
    return match.group(1)


def test_summary_names_tracking_store_and_model(local_run):
    workdir, stdout = local_run
    tracking_uri = _summary_value(stdout, "tracking_uri")
    model_uri = _summary_value(stdout, "model_uri")
    assert tracking_uri == f"sqlite:///{workdir / 'mlruns.db'}"
    assert re.fullmatch(r"models:/maap-finetuned/\d+", model_uri)
    assert re.fullmatch(r"models:/maap-finetuned-onnx/\d+", _summary_value(stdout, "onnx_model"))
    # the drift on general text, with its limit, in the summary and the report (and it still registered)
    assert re.search(r"^general ability: drift [+-]\d+\.\d% \(limit \+50\.0%\), agreement [\d.]+$", stdout, re.M)
    report = (Path(_summary_value(stdout, "run_dir")) / "evaluate" / "outputs" / "evaluation" / "report.md").read_text()
    assert "## General ability: base vs tuned" in report and "max_general_drift" in report
    for step in ("data_prep", "finetune", "evaluate", "register", "export_onnx"):
        assert re.search(rf"\b{step}: done in [\d.]+ s", stdout), f"no progress line for {step}"


def test_mlflow_has_pipeline_run_with_a_child_per_step(local_run):
    import mlflow

    workdir, stdout = local_run
    client = mlflow.MlflowClient(tracking_uri=_summary_value(stdout, "tracking_uri"))
    parent_id = _summary_value(stdout, "mlflow_run_id")
    parent = client.get_run(parent_id)
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    by_name = {run.info.run_name: run for run in children}
    assert set(by_name) == {"data_prep", "finetune", "evaluate", "register", "export_onnx"}
    assert all(run.info.status == "FINISHED" for run in children)
    finetune_metrics = by_name["finetune"].data.metrics
    assert "train_loss" in finetune_metrics or "loss" in finetune_metrics
    assert by_name["evaluate"].data.metrics["finetuned_loss"] < by_name["evaluate"].data.metrics["base_loss"]


def test_registered_model_loads_and_answers_a_chat_request(local_run):
    import mlflow

    _, stdout = local_run
    mlflow.set_tracking_uri(_summary_value(stdout, "tracking_uri"))
    model = mlflow.pyfunc.load_model(_summary_value(stdout, "model_uri"))
    response = model.predict(
        {"messages": [{"role": "user", "content": "How much does the Metro Glide cost?"}], "max_tokens": 8}
    )
    reply = response[0] if isinstance(response, list) else response
    message = reply["choices"][0]["message"]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str) and message["content"].strip()


def test_exported_onnx_model_loads_from_the_registry_and_chats(local_run, tmp_path):
    import mlflow
    import onnxruntime_genai as og

    _, stdout = local_run
    mlflow.set_tracking_uri(_summary_value(stdout, "tracking_uri"))
    folder = mlflow.artifacts.download_artifacts(artifact_uri=_summary_value(stdout, "onnx_model"), dst_path=str(tmp_path))
    model = og.Model(folder)
    tokenizer = og.Tokenizer(model)
    prompt = tokenizer.apply_chat_template('[{"role": "user", "content": "How much does the Metro Glide cost?"}]',
                                           add_generation_prompt=True)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=64)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode(prompt))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) > len(tokenizer.encode(prompt))

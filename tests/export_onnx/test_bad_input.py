"""Bad input is refused before any work, with the fix: architecture, precision x provider, tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest

from maap_finetune.common.errors import UserError, exit_on_user_error
from maap_finetune.export import builder
from tests.export_onnx.conftest import export_argv, export_entry
from tests.helpers import assert_one_error


def _fails(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(export_entry().main, argv)
    return assert_one_error(capsys, exited.value.code, *fragments)


def _copy(model, tmp_path):
    return shutil.copytree(model, tmp_path / "mlflow_model", symlinks=False)


def test_unsupported_architecture_is_refused_before_work_listing_the_supported(
        tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, capsys):
    model = _copy(finetuned_mlflow_model, tmp_path)
    config_path = model / "model" / "config.json"
    config = json.loads(config_path.read_text())
    config["architectures"] = ["GPTNeoXForCausalLM"]
    config_path.write_text(json.dumps(config))
    _fails(capsys, export_argv(tmp_path, model, gate_passed, prepared_chat),
           "'GPTNeoXForCausalLM' cannot be exported", "supported: ", "Phi3ForCausalLM", "LlamaForCausalLM")
    assert list((tmp_path / "onnx_model").iterdir()) == []


@pytest.mark.parametrize("provider, precision, fragments", [
    ("cpu", "fp16", ("precision fp16 does not run on execution_provider cpu", "int4, fp32", "execution_provider to cuda")),
    ("cuda", "int4", ("needs a CUDA GPU", "set execution_provider=cpu", "onnxruntime-genai-cuda")),
])
def test_provider_and_precision_are_checked_with_the_fix(
        tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, capsys, monkeypatch, provider, precision, fragments):
    monkeypatch.setattr(builder, "cuda_available", lambda: False)  # this test's claim: a node without CUDA
    _fails(capsys, export_argv(tmp_path, finetuned_mlflow_model, gate_passed, prepared_chat,
                               execution_provider=provider, precision=precision), *fragments)
    assert list((tmp_path / "onnx_model").iterdir()) == []


def test_cuda_passes_the_check_where_cuda_is_present():
    builder.check_provider("cuda", "fp16", cuda=True)
    with pytest.raises(UserError, match="needs a CUDA GPU"):
        builder.check_provider("cuda", "fp16", cuda=False)


def test_missing_chat_template_is_a_clear_error(tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, capsys):
    model = _copy(finetuned_mlflow_model, tmp_path)
    tokenizer = model / "components" / "tokenizer"
    (tokenizer / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((tokenizer / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (tokenizer / "tokenizer_config.json").write_text(json.dumps(config))
    _fails(capsys, export_argv(tmp_path, model, gate_passed, prepared_chat), "has no chat template")


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "tokenizer").mkdir()
    with pytest.raises(UserError, match="no tokenizer .* give Fine-Tune's mlflow_model output"):
        builder.stage_hf_folder(tmp_path / "model", tmp_path / "tokenizer", tmp_path / "hf")


def test_inputs_are_checked_all_at_once(tmp_path, capsys):
    argv = export_argv(tmp_path, tmp_path / "nothing", tmp_path / "nowhere", tmp_path, int4_block_size=48,
                       registered_model_name="bad name")
    _fails(capsys, argv, "4 problems", "--int4_block_size 48", "MLmodel is missing", "decision.json is missing",
           "--registered_model_name 'bad name'")

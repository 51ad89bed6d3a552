"""Export ONNX compares against Evaluate's parity reference: like with like, or a clear refusal; and it never
loads the full PyTorch model itself (only the model builder reads the full weights, in their saved dtype)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.common.errors import exit_on_user_error
from maap_finetune.evaluation import parity_reference
from tests.export_onnx.conftest import export_argv, export_entry, write_decision
from tests.helpers import assert_one_error


def _evaluation(tmp_path, reference: dict) -> Path:
    folder = write_decision(tmp_path / "evaluation", True)
    parity_reference.write_reference(folder, reference)
    return folder


def _refused(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exited:
        exit_on_user_error(export_entry().main, argv)
    return assert_one_error(capsys, exited.value.code, *fragments)


@pytest.mark.parametrize("changes, fragments", [
    ({"max_new_tokens": 20, "prompts": 5}, ("parity_max_new_tokens: reference 20, this step 12",
                                            "parity_prompts: reference 5, this step 3")),
    ({"model_sha256": "0" * 64}, ("the model weights (sha256 of the mlflow_model's model files): reference '000",)),
    ({"test_split_sha256": "1" * 64, "max_seq_length": 512}, ("the test split", "max_seq_length: reference 512")),
])
def test_a_reference_for_other_weights_or_settings_is_refused_naming_each_difference(
        tmp_path, finetuned_mlflow_model, prepared_chat, tiny_reference, capsys, changes, fragments):
    evaluation = _evaluation(tmp_path, {**tiny_reference, **changes})
    captured = _refused(capsys, export_argv(tmp_path, finetuned_mlflow_model, evaluation, prepared_chat),
                        "parity_reference.json was computed for another model or other settings", *fragments)
    assert "Give Export ONNX the mlflow_model, test_data and evaluation of the same pipeline run" in captured.err
    assert list((tmp_path / "onnx_model").iterdir()) == []  # refused before the build


def test_weights_changed_after_evaluate_are_refused(tmp_path, finetuned_mlflow_model, prepared_chat, tiny_reference,
                                                    capsys):
    import shutil

    model = shutil.copytree(finetuned_mlflow_model, tmp_path / "mlflow_model")
    weights = model / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor
    weights.write_bytes(bytes(data))
    _refused(capsys, export_argv(tmp_path, model, _evaluation(tmp_path, tiny_reference), prepared_chat),
             "the model weights (sha256")


def test_a_missing_reference_says_which_evaluate_input_writes_it(tmp_path, finetuned_mlflow_model, prepared_chat,
                                                                capsys):
    evaluation = write_decision(tmp_path / "evaluation", True)
    _refused(capsys, export_argv(tmp_path, finetuned_mlflow_model, evaluation, prepared_chat),
             "parity_reference.json is missing", "parity_prompts >= 1")


def test_export_never_loads_the_full_pytorch_model(tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed,
                                                   tiny_reference, mlflow_tracking, monkeypatch):
    """Every from_pretrained is recorded: the step's own process loads no model at all (the builder and the
    graph check's cut copy run in its child process, so their heap goes back to the system), and the graph
    check's job, run here, loads only the cut copy of fp32_parity_layers layers, in PyTorch and by its build."""
    import inspect

    from transformers import PreTrainedModel

    from maap_finetune.export import builder, graph_check
    from maap_finetune.models.source import resolve_model_source

    real = PreTrainedModel.from_pretrained.__func__
    loads = []

    def recording(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        by_builder = any("onnxruntime_genai" in frame.filename for frame in inspect.stack())
        loads.append((model.config.num_hidden_layers, by_builder, next(model.parameters()).dtype))
        return model

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(recording))
    export_entry().main(export_argv(tmp_path, finetuned_mlflow_model, gate_passed, prepared_chat,
                                    fp32_parity_layers=1, min_token_agreement=0.0, max_loss_delta=100))
    assert loads == []
    report = json.loads((tmp_path / "export_report" / "export_report.json").read_text())
    assert report["fp32_parity"]["layers"] == 1 and report["passed"]

    saved = json.loads((finetuned_mlflow_model / "model" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2
    source = resolve_model_source(finetuned_mlflow_model, None)
    hf = builder.stage_hf_folder(Path(source.model), Path(source.tokenizer), tmp_path / "hf")
    prepared = graph_check.prepare(str(hf), str(source.tokenizer), tiny_reference, 1, "cpu", str(tmp_path / "job"))
    assert prepared["layers"] == 1
    assert sorted(load[:2] for load in loads) == [(1, False), (1, True)]  # in PyTorch, and by its fp32 build

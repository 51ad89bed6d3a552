"""Export ONNX on the tiny fine-tuned model: fp32 parity, the int4 report, registration, the gate.

The tiny model exports in well under a second; a test's time goes to the PyTorch reference and the
two engines generating a dozen tokens for three prompts.
"""

from __future__ import annotations

import json

import pytest

from tests.export_onnx.conftest import export_argv, export_entry, write_decision
from tests.helpers import assert_one_error


def _report(tmp_path) -> dict:
    return json.loads((tmp_path / "export_report" / "export_report.json").read_text())


def test_fp32_export_matches_pytorch_token_for_token_and_registers(
        tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, mlflow_tracking):
    from mlflow import MlflowClient

    registration = tmp_path / "registration"
    registration.mkdir()
    (registration / "model_info.json").write_text(json.dumps({"registered": True, "name": "bikes", "version": "3"}))
    argv = export_argv(tmp_path, finetuned_mlflow_model, gate_passed, prepared_chat, precision="fp32",
                       registration=registration, registered_model_name="bikes")
    export_entry().main(argv)

    report = _report(tmp_path)
    assert report["passed"] and report["failures"] == []
    parity = report["fp32_parity"]
    assert (parity["prompts"], parity["identical_prompts"], parity["greedy_token_agreement"]) == (3, 3, 1.0)
    for prompt in parity["per_prompt"]:
        assert prompt["onnx_tokens"] == prompt["reference_tokens"] and prompt["first_divergence"] is None
        assert len(prompt["onnx_tokens"]) > 0
    teacher_forced = report["agreement"]["teacher_forced"]
    assert teacher_forced["top1_agreement"] == 1.0 and abs(teacher_forced["loss_delta"]) < 1e-4
    for name in ("genai_config.json", "model.onnx", "tokenizer.json", "chat_template.jinja"):
        path = tmp_path / "onnx_model" / name
        assert path.is_file() and not path.is_symlink(), name

    info = json.loads((tmp_path / "export_report" / "model_info.json").read_text())
    assert (info["registered"], info["name"], info["uri"]) == (True, "bikes-onnx", "models:/bikes-onnx/1")
    version = MlflowClient().get_model_version("bikes-onnx", "1")
    assert {k: version.tags[k] for k in ("source_model_name", "source_model_version", "precision", "execution_provider",
                                          "fp32_parity", "maap_verified")} == {
        "source_model_name": "bikes", "source_model_version": "3", "precision": "fp32", "execution_provider": "cpu",
        "fp32_parity": "identical", "maap_verified": "true"}  # the registry's copy loaded with onnxruntime_genai
    assert len(version.tags["content_sha256"]) == 64


def test_int4_report_is_well_formed_and_checks_fp32_parity_too(
        tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, mlflow_tracking):
    """int4 tokens of a random-ish tiny model may differ: only the report's shape and the fp32 parity are pinned."""
    export_entry().main(export_argv(tmp_path, finetuned_mlflow_model, gate_passed, prepared_chat,
                                    min_token_agreement=0.0, max_loss_delta=100))
    report = _report(tmp_path)
    assert (report["precision"], report["int4_block_size"], report["passed"]) == ("int4", 32, True)
    assert report["fp32_parity"]["identical_prompts"] == 3
    generation = report["agreement"]["generation"]
    assert generation["prompts"] == 3 and 0.0 <= generation["greedy_token_agreement"] <= 1.0
    teacher_forced = report["agreement"]["teacher_forced"]
    assert teacher_forced["scored_tokens"] > 0 and 0.0 <= teacher_forced["top1_agreement"] <= 1.0
    assert teacher_forced["loss_delta"] == pytest.approx(teacher_forced["loss_onnx"] - teacher_forced["loss_pytorch"])
    assert report["size_bytes"]["onnx"] < report["size_bytes"]["pytorch"]  # 4-bit weights
    for engine in ("pytorch", "onnx_genai"):
        assert report["speed"][engine]["decode_tokens_per_s"] > 0 and report["speed"][engine]["time_to_first_token_s"] > 0
    markdown = (tmp_path / "export_report" / "export_report.md").read_text()
    assert "**passed** — int4 for cpu" in markdown and "decode tokens/s" in markdown


def test_a_diverging_fp32_token_registers_nothing_and_the_report_shows_where(
        tmp_path, finetuned_mlflow_model, prepared_chat, gate_passed, mlflow_tracking, monkeypatch, capsys):
    entry = export_entry()
    real = entry.prepare_graph_check

    def pytorch_off_by_one_at_token_2(*args):
        # The cut copy's PyTorch side, as the build child returns it (the ONNX side runs in another child)
        cut = real(*args)
        for prompt in cut["reference"]["generation"]:
            if len(prompt["top1"]) > 2:
                prompt["top1"][2] = (prompt["top1"][2] + 1) % 700
        return cut

    monkeypatch.setattr(entry, "prepare_graph_check", pytorch_off_by_one_at_token_2)
    # a failed check is a quality decision: the step succeeds, registers nothing and says why and what to change
    entry.main(export_argv(tmp_path, finetuned_mlflow_model, gate_passed, prepared_chat, precision="fp32"))
    out = capsys.readouterr().out
    assert "model not registered: the export failed its checks" in out and "at generated token 2" in out
    assert "fix: " in out
    report = _report(tmp_path)
    assert not report["passed"]
    assert {p["first_divergence"] for p in report["fp32_parity"]["per_prompt"] if len(p["reference_tokens"]) > 2} == {2}
    info = json.loads((tmp_path / "export_report" / "model_info.json").read_text())
    assert info["registered"] is False and "failed its checks" in info["reason"]
    assert "token 2" in (tmp_path / "export_report" / "export_report.md").read_text()


def test_a_failed_gate_skips_with_the_reason(tmp_path, finetuned_mlflow_model, prepared_chat, mlflow_tracking):
    evaluation = write_decision(tmp_path / "evaluation", False, "loss 6.7 does not beat the base model's 6.6")
    export_entry().main(export_argv(tmp_path, finetuned_mlflow_model, evaluation, prepared_chat))
    report = _report(tmp_path)
    assert report["exported"] is False and "loss 6.7 does not beat" in report["reason"]
    assert list((tmp_path / "onnx_model").iterdir()) == []
    info = json.loads((tmp_path / "export_report" / "model_info.json").read_text())
    assert info["registered"] is False and info["reason"].startswith("the quality gate failed: loss 6.7")

"""Registration of the exported folder: Azure ML custom_model (fake operations) and its tags."""

from __future__ import annotations

import json
from types import SimpleNamespace
from unittest.mock import create_autospec

from maap_finetune.export import registration

REPORT = {
    "precision": "int4", "execution_provider": "cpu", "architecture": "Phi3ForCausalLM",
    "versions": {"onnxruntime_genai": "0.18.0"},
    "fp32_parity": {"prompts": 8, "identical_prompts": 8},
    "agreement": {"teacher_forced": {"top1_agreement": 0.97, "loss_delta": 0.012}},
}


def _fake_client():
    from azure.ai.ml.operations import ModelOperations

    models = create_autospec(ModelOperations, instance=True)
    models.list.return_value = iter([])
    models.create_or_update.side_effect = lambda model: SimpleNamespace(version="4", tags=model.tags)
    return SimpleNamespace(models=models)


def test_azure_registers_a_custom_model_named_after_the_merged_one(tmp_path):
    (tmp_path / "registration").mkdir()
    (tmp_path / "registration" / "model_info.json").write_text(json.dumps(
        {"registered": True, "name": "maap-finetuned", "version": "7"}))
    source = registration.source_model(tmp_path / "registration")
    tags = registration.build_tags(REPORT, source, "pipeline_job_1", "export_step_1")
    client = _fake_client()
    info = registration.register(tmp_path, registration.onnx_model_name("maap-finetuned"), tags, in_azure=True,
                                 run=None, registry_name=None, ml_client=client)

    [model] = client.models.create_or_update.call_args.args
    assert (model.name, model.type, model.path) == ("maap-finetuned-onnx", "custom_model", str(tmp_path))
    assert {k: model.tags[k] for k in ("source_model_name", "source_model_version", "precision", "execution_provider",
                                        "fp32_parity", "pipeline_run_id")} == {
        "source_model_name": "maap-finetuned", "source_model_version": "7", "precision": "int4",
        "execution_provider": "cpu", "fp32_parity": "identical", "pipeline_run_id": "pipeline_job_1"}
    assert (info.registered, info.uri) == (True, "azureml:maap-finetuned-onnx:4")
    assert info.reason.startswith("exported and checked")


def test_without_register_output_the_source_version_is_not_recorded():
    assert registration.source_model(None) == ("not recorded", "not recorded")

"""Registration of the exported folder: Azure ML custom_model (fake operations) and its tags."""

from __future__ import annotations

import json
import pytest

from maap_finetune.export import registration

REPORT = {
    "precision": "int4", "execution_provider": "cpu", "architecture": "Phi3ForCausalLM",
    "versions": {"onnxruntime_genai": "0.18.0"},
    "fp32_parity": {"prompts": 8, "identical_prompts": 8},
    "agreement": {"teacher_forced": {"top1_agreement": 0.97, "loss_delta": 0.012}},
}


def _onnx_folder(folder):
    """The files of an exported folder (their bytes are what the content key hashes; load_back is replaced)."""
    folder.mkdir()
    (folder / "genai_config.json").write_text(json.dumps({"model": {"type": "phi3"}}))
    (folder / "model.onnx").write_bytes(b"onnx graph" * 100)
    (folder / "model.onnx.data").write_bytes(bytes(range(256)) * 40)
    return folder


def test_azure_registers_a_custom_model_named_after_the_merged_one(tmp_path, monkeypatch):
    from tests.azure_fakes import ModelStore, fake_ml_client

    (tmp_path / "registration").mkdir()
    (tmp_path / "registration" / "model_info.json").write_text(json.dumps(
        {"registered": True, "name": "maap-finetuned", "version": "7"}))
    source = registration.source_model(tmp_path / "registration")
    client = fake_ml_client()
    store = ModelStore(client.models, storage=tmp_path / "storage")
    onnx_dir = _onnx_folder(tmp_path / "onnx_model")
    loaded = []
    monkeypatch.setattr(registration, "load_back", loaded.append)  # onnxruntime_genai needs a real export
    name = registration.onnx_model_name("maap-finetuned")
    tags = registration.build_tags(REPORT, source, "pipeline_job_1", "export_step_1")
    info = registration.register(onnx_dir, name, tags, in_azure=True, run=None, registry_name=None, ml_client=client)

    model, marked = store.requests  # created unverified, then marked verified
    assert (model.name, model.type, model.path) == ("maap-finetuned-onnx", "custom_model", str(onnx_dir))
    assert {k: model.tags[k] for k in ("source_model_name", "source_model_version", "precision", "execution_provider",
                                        "fp32_parity", "pipeline_run_id", "maap_verified")} == {
        "source_model_name": "maap-finetuned", "source_model_version": "7", "precision": "int4",
        "execution_provider": "cpu", "fp32_parity": "identical", "pipeline_run_id": "pipeline_job_1",
        "maap_verified": "false"}
    assert (marked.version, marked.tags["maap_verified"]) == ("1", "true")
    [copy] = loaded  # the check loaded the registry's copy, downloaded to a scratch folder (removed since)
    assert copy.name == "onnx_model" and copy.parent.name == name and not copy.exists()
    assert (info.registered, info.uri, info.tags["maap_verified"]) == (True, "azureml:maap-finetuned-onnx:1", "true")
    assert info.reason.startswith("exported and checked") and "loaded with onnxruntime_genai.Model" in info.reason

    # Another pipeline run exporting the same files: the verified version is reused, nothing is created.
    tags = registration.build_tags(REPORT, source, "pipeline_job_2", "export_step_2")
    again = registration.register(onnx_dir, name, tags, in_azure=True, run=None, registry_name=None, ml_client=client)
    assert (again.version, again.created, len(store.payloads)) == ("1", False, 1)


def test_an_export_whose_copy_does_not_load_stays_unverified(tmp_path, monkeypatch):
    from tests.azure_fakes import ModelStore, fake_ml_client

    client = fake_ml_client()
    store = ModelStore(client.models, storage=tmp_path / "storage")

    def does_not_load(folder):
        raise RuntimeError(f"{folder}: Load model from model.onnx failed")

    monkeypatch.setattr(registration, "load_back", does_not_load)
    tags = registration.build_tags(REPORT, ("maap-finetuned", "7"), "pipeline_job_1", "export_step_1")
    with pytest.raises(RuntimeError, match="Load model from model.onnx failed"):
        registration.register(_onnx_folder(tmp_path / "onnx_model"), "maap-finetuned-onnx", tags, in_azure=True,
                              run=None, registry_name=None, ml_client=client)
    assert store.get("maap-finetuned-onnx", "1").tags["maap_verified"] == "false"


def test_without_register_output_the_source_version_is_not_recorded():
    assert registration.source_model(None) == ("not recorded", "not recorded")

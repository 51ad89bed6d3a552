"""The merged model keeps its base's dtype (merged_dtype auto), is checked as saved, and the adapter stays
as PEFT saves it (fp32 LoRA weights)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from maap_finetune.models.dtype import safetensors_dtypes, stored_precision
from maap_finetune.training.merge import parity_report, saved_copy_report
from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry


@pytest.fixture(scope="module")
def bf16_base(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model stored in bf16, as most published bases are."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bf16")
    AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(folder)
    return folder


def test_stored_precision_reads_the_config_then_the_safetensors(tmp_path, tiny_model_dir, bf16_base):
    assert stored_precision(tiny_model_dir) == ("fp32", "config.json dtype")  # the tiny model is saved in fp32
    assert stored_precision(bf16_base) == ("bf16", "config.json dtype")
    legacy = tmp_path / "legacy"  # transformers < 4.56 wrote torch_dtype
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"torch_dtype": "float16"}))
    assert stored_precision(legacy) == ("fp16", "config.json torch_dtype")
    (legacy / "config.json").write_text("{}")  # no dtype in the config: the weights' headers say it
    (legacy / "model.safetensors").symlink_to(bf16_base / "model.safetensors")
    assert stored_precision(legacy) == ("bf16", "safetensors headers")
    (legacy / "model.safetensors").unlink()
    assert stored_precision(legacy)[0] is None


def test_merged_dtype_input_overrides_the_base(tmp_path, bf16_base):
    from maap_finetune.models.source import resolve_model_source
    from maap_finetune.training.outputs import saved_precision

    finetune = load_entry("finetune")
    config = finetune.parse_args(argv_from_spec("finetune", train_data=tmp_path, model_path=bf16_base,
                                                **outputs(tmp_path)))
    source = resolve_model_source(bf16_base, None)
    assert config.merged_dtype == "auto"
    assert saved_precision(config, source) == ("bf16", "merged_dtype auto: the base's dtype (config.json dtype)")
    assert saved_precision(replace(config, merged_dtype="fp32"), source) == ("fp32", "merged_dtype")


def test_a_non_finite_saved_logit_fails_the_parity_check():
    import torch

    reference = [torch.tensor([[1.0, -2.0]])]
    assert parity_report(reference, [torch.tensor([[1.0, -2.0]])], 0.05)["passed"]
    for bad in (float("inf"), float("nan")):  # an fp16 overflow gives inf, and inf - inf nan
        report = parity_report(reference, [torch.tensor([[bad, -2.0]])], 0.05)
        assert not report["passed"] and report["max_relative_logit_diff"] == float("inf")
        assert not saved_copy_report(reference, [torch.tensor([[bad, -2.0]])])["passed"]
    rounded = saved_copy_report(reference, [torch.tensor([[1.25, -2.0]])])  # deep bf16 rounding: recorded only
    assert rounded["passed"] and rounded["max_relative_logit_diff"] == 0.125 and rounded["tolerance"] is None


def test_a_bf16_base_gives_a_bf16_merged_model(tmp_path, bf16_base, prepared_chat, mlflow_tracking):
    import mlflow.pyfunc

    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared_chat, model_path=bf16_base, max_steps=2, learning_rate=0.005,
        **outputs(tmp_path),
    ))
    assert summary["precision"] == "fp32" and summary["merged_dtype"] == "bf16"  # trained in fp32 on the CPU
    merged = tmp_path / "mlflow_model" / "model"
    assert set(safetensors_dtypes(merged)) == {"BF16"}
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    base_bytes = (bf16_base / "model.safetensors").stat().st_size
    assert abs((merged / "model.safetensors").stat().st_size - base_bytes) < 0.01 * base_bytes
    assert set(safetensors_dtypes(tmp_path / "adapter")) == {"F32"}  # PEFT keeps the LoRA weights it trained in fp32
    parity = summary["merge_parity"]
    assert parity["passed"] and parity["max_relative_logit_diff"] < 1e-4  # the fp32 merge
    saved = parity["saved"]  # the bf16 copy, computed in bf16: its rounding is recorded, not gated
    assert saved["passed"] and saved["tolerance"] is None and 0 < saved["max_relative_logit_diff"] < 1
    served = mlflow.pyfunc.load_model(str(tmp_path / "mlflow_model"))
    reply = served.predict({"messages": [{"role": "user", "content": "Do you repair bikes?"}], "max_tokens": 4})
    assert reply[0]["choices"][0]["message"]["role"] == "assistant"

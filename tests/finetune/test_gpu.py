"""GPU-only paths: QLoRA / QDoRA on a 4-bit NF4 base, and LoRA under DeepSpeed ZeRO-3.

Skipped where CUDA (or bitsandbytes / deepspeed) is absent; on CPU the same paths are covered by
the preflight and builder tests."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry


def _base_validation_loss(model_dir, prepared) -> float:
    """The untrained base's loss on the validation assistant tokens: a trained run must end below it."""
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.data import target_token_loss

    return target_token_loss(str(model_dir), load_prepared(prepared).rows("validation"), 2048, "validation")


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def _record(record_property, summary: dict, base_loss: float) -> None:
    """What the run showed, for benchmarks/gpu_suite.py's report (through pytest's JUnit XML)."""
    record_property("base_eval_loss", round(base_loss, 4))
    record_property("eval_loss", round(summary["eval_loss"], 4))
    record_property("precision", summary["precision"])
    record_property("merge_parity_passed", summary["merge_parity"]["passed"])
    record_property("merge_parity_max_relative_logit_diff", summary["merge_parity"].get("max_relative_logit_diff"))


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")]


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("method", ["qlora", "qdora"])
def test_quantized_methods_train_and_merge_in_bf16(method, tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking,
                                                   record_property):
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared_chat, model_path=tiny_model_dir, peft_method=method, max_steps=8,
        learning_rate=0.005, **outputs(tmp_path)))
    base = _base_validation_loss(tiny_model_dir, prepared_chat)
    _record(record_property, summary, base)
    assert summary["steps"] == 8 and summary["precision"] == "bf16"
    assert summary["eval_loss"] < base  # it learned
    assert summary["merge_parity"]["passed"], summary["merge_parity"]
    config = json.loads((tmp_path / "mlflow_model" / "model" / "config.json").read_text())
    assert "quantization_config" not in config  # merged into dequantized weights, saved unquantized
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
def test_lora_under_zero3_saves_a_non_empty_adapter(tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking,
                                                     monkeypatch, record_property):
    from safetensors.torch import load_file

    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT="29561").items():
        monkeypatch.setenv(key, value)
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared_chat, model_path=tiny_model_dir, deepspeed_stage=3, max_steps=8,
        learning_rate=0.005, **outputs(tmp_path)))
    base = _base_validation_loss(tiny_model_dir, prepared_chat)
    _record(record_property, summary, base)
    assert summary["plan"]["deepspeed_stage"] == 3
    assert summary["eval_loss"] < base  # it learned
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert weights and all(t.numel() > 0 for t in weights.values())
    assert summary["merge_parity"]["passed"]

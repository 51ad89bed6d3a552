"""Merge the adapter into the base weights, and prove the merge changed nothing.

The merge starts from a fresh copy of the base in full precision (fp32 on CPU, the training dtype
on GPU); a 4-bit base is dequantized to bf16 first (`model.dequantize()`), so nothing is merged into
4-bit weights. The parity check compares the merged model's logits with base + adapter (the model as
trained) on held-out examples.
"""

from __future__ import annotations

from typing import Any


def merge_adapter(
    base_source: str,
    adapter_dir: str,
    model_kwargs: dict[str, Any],
    quantized: bool,
):
    """Return (merged_model, reference_model): reference is base + adapter, unmerged, for parity."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    import torch

    kwargs = dict(model_kwargs)
    if quantized:
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_source, **kwargs), adapter_dir)
        base = AutoModelForCausalLM.from_pretrained(base_source, **kwargs)
        base = base.dequantize()  # 4-bit NF4 -> bf16 weights
        base = base.to(torch.bfloat16)
    else:
        kwargs.pop("quantization_config", None)
        kwargs.pop("device_map", None)
        base = AutoModelForCausalLM.from_pretrained(base_source, **kwargs)
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_source, **kwargs), adapter_dir)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    reference.eval()
    merged.eval()
    return merged, reference


def logits_parity(merged, reference, examples: list[list[int]], tolerance: float) -> dict[str, Any]:
    """Largest |merged - reference| logit difference, relative to the largest |logit|, over `examples`."""
    import torch

    worst_abs = 0.0
    scale = 0.0
    with torch.no_grad():
        for ids in examples:
            inputs = torch.tensor([ids])
            a = merged(input_ids=inputs.to(merged.device)).logits.float().cpu()
            b = reference(input_ids=inputs.to(reference.device)).logits.float().cpu()
            worst_abs = max(worst_abs, float((a - b).abs().max()))
            scale = max(scale, float(b.abs().max()))
    relative = worst_abs / scale if scale else worst_abs
    return {
        "examples": len(examples),
        "max_abs_logit_diff": worst_abs,
        "max_relative_logit_diff": relative,
        "tolerance": tolerance,
        "passed": relative <= tolerance,
    }

"""Merge the adapter into the base weights, and prove the merge changed nothing.

The merge starts from a fresh copy of the base in full precision (fp32); a 4-bit base is dequantized
to bf16 first (`model.dequantize()`), so nothing is merged into 4-bit weights. The parity check compares
the merged model's logits with base + adapter (the model as trained) on held-out examples. The merged
model is then cast to the dtype it is saved in (`merged_dtype`) and run once more, as saved: its logits,
computed in that dtype, must be finite (a weight beyond fp16's range overflows), and their difference from the
same reference is recorded, not gated. That difference is the dtype's own rounding, which grows with depth:
on random bf16 Phi-3 models, 0.010 (relative) at 8 layers and 0.070 at 12 (benchmarks/scale.py runs), so no
fixed tolerance tells a correct bf16 merge from a wrong one; the fp32 merge check above does.
"""

from __future__ import annotations

import math
from typing import Any

def logits_of(model, examples: list[list[int]]):
    import torch

    with torch.no_grad():
        return [model(input_ids=torch.tensor([ids]).to(model.device)).logits.float().cpu() for ids in examples]


def merge_with_parity(
    base_source: str,
    adapter_dir: str,
    model_kwargs: dict[str, Any],
    quantized: bool,
    examples: list[list[int]],
    tolerance: float,
    trained_logits: list | None = None,
    trained_in_fp32: bool = True,
    saved_precision: str = "fp32",
):
    """Return (merged_model, parity). The reference is base + saved adapter, unmerged; when given,
    `trained_logits` (the model in memory at the end of training) are a second reference, which also
    proves the saved adapter reproduces what was trained; it decides pass/fail only when training ran
    in fp32 (bf16/fp16 logits carry about 1% rounding noise) and is recorded either way.

    Unquantized: one base load; reference logits first, then merge in place. Quantized: the reference
    runs on the 4-bit base; the merge uses a second copy, dequantized to bf16 and upcast to fp32.
    The merged model is returned cast to `saved_precision` (bf16 | fp16 | fp32), checked as saved
    (`parity["saved"]`, which also decides pass/fail)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from maap_finetune.training.builders import torch_dtype
    from maap_finetune.training.monitoring import release_freed_memory

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_source, **model_kwargs), adapter_dir)
    model.eval()
    reference = logits_of(model, examples)
    if quantized:
        del model
        release_freed_memory()
        base = AutoModelForCausalLM.from_pretrained(base_source, **model_kwargs).dequantize().to(torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir)
    merged = model.merge_and_unload().eval()
    merged_logits = logits_of(merged, examples)
    parity = parity_report(reference, merged_logits, tolerance)
    if trained_logits is not None:
        versus_trained = parity_report(trained_logits, merged_logits, tolerance)
        parity["max_relative_logit_diff_vs_trained"] = versus_trained["max_relative_logit_diff"]
        parity["vs_trained_checked"] = trained_in_fp32
        if trained_in_fp32:
            parity["passed"] = parity["passed"] and versus_trained["passed"]
    parity["saved_precision"] = saved_precision
    if saved_precision != "fp32":
        merged = merged.to(torch_dtype(saved_precision))  # in place: the fp32 weights are freed as they go
        release_freed_memory()  # their heap pages too, before the save serializes the 16-bit copy
        parity["saved"] = saved = saved_copy_report(reference, logits_of(merged, examples))
        parity["passed"] = parity["passed"] and saved["passed"]
    return merged, parity


def saved_copy_report(reference, candidate) -> dict[str, Any]:
    """The 16-bit copy's logits against base + adapter: finite passes; the rounding is recorded, not gated."""
    report = parity_report(reference, candidate, math.inf)
    report.update(tolerance=None, passed=math.isfinite(report["max_abs_logit_diff"]))
    return report


def parity_report(reference, candidate, tolerance: float) -> dict[str, Any]:
    """Largest |candidate - reference| logit difference, relative to the largest |reference logit|.
    A non-finite candidate logit (a weight that overflowed fp16, say) fails it."""
    diffs = [float((a - b).abs().max()) for a, b in zip(candidate, reference)]
    worst_abs = float("inf") if any(d != d or d == float("inf") for d in diffs) else max(diffs, default=0.0)
    scale = max((float(b.abs().max()) for b in reference), default=0.0)
    relative = worst_abs / scale if scale else worst_abs
    return {
        "examples": len(reference),
        "max_abs_logit_diff": worst_abs,
        "max_relative_logit_diff": relative,
        "tolerance": tolerance,
        "passed": relative <= tolerance,
    }

"""Every check of one export, gathered into the report dict (see `report` for the verdict)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError


def skipped_report(reason: str, config) -> dict[str, Any]:
    return {"exported": False, "passed": False, "reason": reason, "precision": config.precision,
            "execution_provider": config.execution_provider, "failures": []}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name.replace("-", "_"): version(name) for name in ("onnxruntime-genai", "onnxruntime", "torch", "transformers")}


def _machine() -> str:
    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs visible, shared with whatever else ran"


def test_examples(test_data: Path, limit: int):
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.evaluation.generation import read_examples

    prepared = load_prepared(test_data)
    examples = read_examples(prepared.split_path("test"), prepared.format, limit)
    if not examples:
        raise UserError(f"--test_data {test_data}: the test split is empty; the parity check needs test prompts "
                        "(give Data Prep a test_ratio > 0 or test_data)")
    return examples


def check_export(config, source, architecture: str, hf_folder: Path, scratch: Path, build_seconds: float) -> dict[str, Any]:
    from maap_finetune.evaluation.generation import load_model
    from maap_finetune.export import builder, parity
    from maap_finetune.export.report import fp32_failures, threshold_failures

    examples = test_examples(config.test_data, config.parity_prompts)
    loaded = load_model(source.model, source.tokenizer, trust_remote_code=False, device="cpu")  # fp32 reference
    results, torch_timing, onnx_timing = parity.compare_generation(
        loaded, config.onnx_model, examples, config.parity_max_new_tokens, config.max_seq_length)
    generation = parity.generation_summary(results)
    teacher_forced = parity.compare_logits(loaded, config.onnx_model, examples, config.max_seq_length,
                                           config.execution_provider)
    fp32 = None
    if config.precision == "fp32":
        fp32 = generation
    elif config.fp32_parity:
        print("[export_onnx] building an fp32 export for the parity check", flush=True)
        fp32_dir = builder.build(hf_folder, scratch / "fp32", "fp32", config.execution_provider, scratch / "cache",
                                 config.int4_block_size, None)
        fp32 = parity.generation_summary(parity.compare_generation(
            loaded, fp32_dir, examples, config.parity_max_new_tokens, config.max_seq_length)[0])
    failures = (fp32_failures(fp32) if fp32 else []) + threshold_failures(
        teacher_forced, config.min_token_agreement, config.max_loss_delta, config.precision)
    torch_speed, onnx_speed = torch_timing.summary(), onnx_timing.summary()
    speedup = (onnx_speed["decode_tokens_per_s"] / torch_speed["decode_tokens_per_s"]
               if onnx_speed["decode_tokens_per_s"] and torch_speed["decode_tokens_per_s"] else None)
    pytorch_bytes = builder.folder_bytes(Path(source.model))
    onnx_bytes = builder.folder_bytes(config.onnx_model)
    return {
        "exported": True,
        "passed": not failures,
        "failures": failures,
        "reason": "every check passed" if not failures else "; ".join(failures),
        "precision": config.precision,
        "execution_provider": config.execution_provider,
        "int4_block_size": config.int4_block_size if config.precision == "int4" else None,
        "int4_accuracy_level": config.int4_accuracy_level if config.precision == "int4" else None,
        "architecture": architecture,
        "build_seconds": build_seconds,
        "versions": _versions(),
        "thresholds": {"min_token_agreement": config.min_token_agreement, "max_loss_delta": config.max_loss_delta},
        "fp32_parity": fp32,
        "agreement": {"generation": generation, "teacher_forced": teacher_forced},
        "size_bytes": {"pytorch": pytorch_bytes, "onnx": onnx_bytes, "ratio": onnx_bytes / pytorch_bytes if pytorch_bytes else None},
        "speed": {"pytorch": {"engine": "transformers generate, fp32", **torch_speed},
                  "onnx_genai": {"engine": f"onnxruntime-genai, {config.precision}", **onnx_speed},
                  "decode_speedup": speedup, "machine": _machine(), "prompts": len(results)},
    }

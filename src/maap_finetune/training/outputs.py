"""Rank 0's outputs after training: tokenizer, merged model (with its parity check), MLflow model,
training_summary.json, the loss curve, all logged to the step's MLflow run."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

from maap_finetune.common import tracking
from maap_finetune.training.config import FinetuneConfig
from maap_finetune.training.plan import TrainingPlan
from maap_finetune.training.monitoring import peak_memory_bytes, plot_loss_curve, write_summary

log = logging.getLogger(__name__)

SUMMARY_FILE = "training_summary.json"
LOSS_CURVE_FILE = "loss_curve.png"


class MergeParityError(RuntimeError):
    """The merged model does not reproduce base + adapter: something in the merge is wrong."""


def _merge_kwargs(config: FinetuneConfig, plan: TrainingPlan) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = dict(
        dtype=torch.float32,  # merge and compare in full precision; cast for saving afterwards
        # fp32 merge: flash attention runs in half precision only
        attn_implementation="eager" if config.attn_implementation == "eager" else "sdpa",
        trust_remote_code=config.trust_remote_code,
    )
    if plan.cuda:
        kwargs["device_map"] = {"": 0}
    return kwargs


def _clear_folder(folder: Path) -> None:
    """Empty an output folder left half-written by an interrupted earlier attempt of this job."""
    if folder.is_dir() and any(folder.iterdir()):
        log.warning("emptying %s, left over from an interrupted attempt", folder)
        for child in folder.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def build_merged_model(config: FinetuneConfig, source, result) -> tuple[Any, dict[str, Any]]:
    import torch
    from transformers import AutoModelForCausalLM

    from maap_finetune.training import builders
    from maap_finetune.training.merge import merge_with_parity

    if not config.uses_adapter:
        model = AutoModelForCausalLM.from_pretrained(str(config.adapter), **_merge_kwargs(config, result.plan))
        return model, {"applicable": False, "reason": "peft_method none trains every weight; there is no adapter"}
    # A 4-bit reference must load exactly as it trained (quantized, bf16 compute), in this one process (no ZeRO).
    plan = result.plan
    single = replace(plan, deepspeed_stage=None, ds_config=None)
    kwargs = builders.build_model_kwargs(config, single) if config.is_quantized else _merge_kwargs(config, plan)
    merged, parity = merge_with_parity(
        source.model, str(config.adapter), kwargs, config.is_quantized, result.parity_inputs,
        config.merge_parity_tolerance, result.trained_logits, trained_in_fp32=plan.precision == "fp32",
    )
    parity["applicable"] = True
    merged = merged.to(builders.torch_dtype(plan.precision))
    return merged, parity


def write_outputs(config: FinetuneConfig, source, result) -> dict[str, Any]:
    from maap_finetune.registry.mlflow_model import CHAT_TASK, TEXT_TASK, save_mlflow_model

    adapter_dir = Path(config.adapter)
    result.tokenizer.save_pretrained(adapter_dir)

    merged, parity = build_merged_model(config, source, result)
    log.info("merge parity: %s", parity)

    tokens_per_second = result.train_tokens / result.train_runtime_s if result.train_runtime_s else None
    summary: dict[str, Any] = {
        "base_model": source.display_name,
        "peft_method": config.peft_method,
        "precision": result.plan.precision,
        "plan": result.plan.as_dict(),
        "world_size": result.world_size,
        "steps": result.global_step,
        "epochs": result.epoch,
        "resumed_from_checkpoint": result.resumed_from,
        "resumed_at_step": result.resumed_at_step,
        "steps_this_run": result.global_step - result.resumed_at_step,
        "train_runtime_s": result.train_runtime_s,
        "tokens": result.train_tokens,
        "tokens_per_second": tokens_per_second,
        "padding_ratio": 1.0 - result.train_tokens / result.train_slots if result.train_slots else 0.0,
        "batching": config.batching,
        "train_examples": result.train_stats.rows - result.train_stats.dropped_no_target,
        "train_examples_truncated": result.train_stats.truncated,
        "train_examples_dropped_no_target": result.train_stats.dropped_no_target,
        "train_target_tokens": result.train_stats.target_tokens,
        "validation_examples_truncated": result.eval_stats.truncated,
        "train_loss": result.train_loss,
        "final_loss": result.final_logged_loss,
        "eval_loss": result.eval_loss,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "default_chat_template_added": result.added_chat_template,
        "merge_parity": parity,
        **peak_memory_bytes(),
    }
    plot_loss_curve(result.log_history, adapter_dir / LOSS_CURVE_FILE)
    write_summary(adapter_dir / SUMMARY_FILE, summary)
    if parity.get("applicable") and not parity["passed"]:
        tracking.log_artifacts(adapter_dir, "adapter")
        raise MergeParityError(
            f"merged model logits differ from base + adapter by {parity['max_relative_logit_diff']:.3g} (relative), "
            f"above merge_parity_tolerance {config.merge_parity_tolerance}; see {adapter_dir / SUMMARY_FILE}"
        )

    mlflow_dir = Path(config.mlflow_model)
    _clear_folder(mlflow_dir)
    merged.name_or_path = source.display_name
    save_mlflow_model(
        merged,
        result.tokenizer,
        mlflow_dir,
        # Text-format data on a base model without a chat template: serve plain text generation.
        task=CHAT_TASK if getattr(result.tokenizer, "chat_template", None) else TEXT_TASK,
        metadata={"base_model": source.display_name, "peft_method": config.peft_method},
    )

    tracking.log_metrics(
        {
            "final_train_loss": summary["train_loss"],
            "final_eval_loss": summary["eval_loss"],
            "train_tokens_per_second": tokens_per_second,
            "padding_ratio": summary["padding_ratio"],
            "merge_parity_max_relative_logit_diff": parity.get("max_relative_logit_diff"),
            **{k: v for k, v in summary.items() if k.startswith("peak_")},
        },
        step=result.global_step,
    )
    tracking.log_artifacts(adapter_dir, "adapter")
    tracking.log_artifacts(mlflow_dir, "mlflow_model")
    return summary

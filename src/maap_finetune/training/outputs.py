"""Rank 0's outputs after training: tokenizer, merged model (with its parity check), MLflow model,
training_summary.json, the loss curve, logged to the step's MLflow run.

Locally every output folder is logged. Inside Azure ML the outputs already are the job's outputs in
the workspace's storage, so only the small files go to the run (`AZURE_RUN_ARTIFACTS`): logging a
multi-GB merged model again would copy it a second time (and can time out after training); Register
creates the model from the `mlflow_model` output itself (see maap_finetune.registry.target).
"""

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
MLFLOW_MODEL_OUTPUT = "mlflow_model"  # the output's name in components/finetune/spec.yaml
# (output, file) pairs logged to the run inside Azure ML: the summary, the plot and the MLmodel.
AZURE_RUN_ARTIFACTS = (("adapter", SUMMARY_FILE), ("adapter", LOSS_CURVE_FILE), (MLFLOW_MODEL_OUTPUT, "MLmodel"))


class MergeParityError(RuntimeError):
    """The merged model does not reproduce base + adapter: something in the merge is wrong."""


def _merge_kwargs(config: FinetuneConfig, plan: TrainingPlan) -> dict[str, Any]:
    import torch

    kwargs: dict[str, Any] = dict(
        dtype=torch.float32,  # merge and compare in full precision; cast to merged_dtype for saving afterwards
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


def saved_precision(config: FinetuneConfig, source) -> tuple[str, str]:
    """(bf16 | fp16 | fp32, why) the merged model is saved in: merged_dtype, or with auto the base's dtype."""
    from maap_finetune.models.dtype import stored_precision

    if config.merged_dtype != "auto":
        return config.merged_dtype, "merged_dtype"
    precision, where = stored_precision(source.model)
    if precision is None:
        return "fp32", f"merged_dtype auto: the base's dtype is unknown ({where}), so fp32"
    return precision, f"merged_dtype auto: the base's dtype ({where})"


def build_merged_model(config: FinetuneConfig, source, result) -> tuple[Any, dict[str, Any]]:
    from transformers import AutoModelForCausalLM

    from maap_finetune.training import builders
    from maap_finetune.training.merge import merge_with_parity

    precision, why = saved_precision(config, source)
    log.info("the merged model is saved in %s (%s)", precision, why)
    if not config.uses_adapter:
        model = AutoModelForCausalLM.from_pretrained(str(config.adapter), **_merge_kwargs(config, result.plan))
        return model.to(builders.torch_dtype(precision)), {
            "applicable": False, "reason": "peft_method none trains every weight; there is no adapter",
            "saved_precision": precision, "saved_precision_from": why,
        }
    # A 4-bit reference must load exactly as it trained (quantized, bf16 compute), in this one process (no ZeRO).
    plan = result.plan
    single = replace(plan, deepspeed_stage=None, ds_config=None)
    kwargs = builders.build_model_kwargs(config, single) if config.is_quantized else _merge_kwargs(config, plan)
    merged, parity = merge_with_parity(
        source.model, str(config.adapter), kwargs, config.is_quantized, result.parity_inputs,
        config.merge_parity_tolerance, result.trained_logits, trained_in_fp32=plan.precision == "fp32",
        saved_precision=precision,
    )
    parity.update(applicable=True, saved_precision_from=why)
    return merged, parity


NOT_LOGGED = ("training_args.bin",)


def log_output_artifacts(folders: dict[str, Path], in_azure: bool) -> None:
    """Log the output folders to the step's run; inside Azure ML only the small files (module docstring)."""
    if not in_azure:
        for artifact_path, folder in folders.items():
            # training_args.bin is a pickle (loading it runs code); its facts are the run's params.
            tracking.log_artifacts(folder, artifact_path, exclude=NOT_LOGGED)
        return
    for artifact_path, name in AZURE_RUN_ARTIFACTS:
        if (folders[artifact_path] / name).is_file():
            tracking.log_artifact(folders[artifact_path] / name, artifact_path)


def write_outputs(config: FinetuneConfig, source, result) -> dict[str, Any]:
    from maap_finetune.registry.mlflow_model import CHAT_TASK, TEXT_TASK, save_mlflow_model
    from maap_finetune.registry.target import job_output_metadata, running_in_azure_ml

    adapter_dir = Path(config.adapter)
    result.tokenizer.save_pretrained(adapter_dir)

    merged, parity = build_merged_model(config, source, result)
    log.info("merge parity: %s", parity)

    tokens_per_second = result.train_tokens / result.train_runtime_s if result.train_runtime_s else None
    summary: dict[str, Any] = {
        "base_model": source.display_name,
        "peft_method": config.peft_method,
        "training_method": config.training_method,
        "precision": result.plan.precision,
        "merged_dtype": parity["saved_precision"],
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
        **result.validation,
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "default_chat_template_added": result.added_chat_template,
        "merge_parity": parity,
        **peak_memory_bytes(),
        **result.extra,
    }
    plot_loss_curve(result.log_history, adapter_dir / LOSS_CURVE_FILE, result.validation)
    write_summary(adapter_dir / SUMMARY_FILE, summary)
    in_azure = running_in_azure_ml()
    if parity.get("applicable") and not parity["passed"]:
        log_output_artifacts({"adapter": adapter_dir}, in_azure)
        saved = parity.get("saved")
        if saved is not None and not saved["passed"]:
            raise MergeParityError(
                f"the merged model saved in {parity['saved_precision']} gives non-finite logits (a weight beyond the "
                f"dtype's range); the fp32 merge differed by {parity['max_relative_logit_diff']:.3g}. Give "
                f"merged_dtype bf16 (fp16 overflowed) or fp32; see {adapter_dir / SUMMARY_FILE}"
            )
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
        # Inside Azure ML: where this output lives, so Register need not upload it again.
        metadata={"base_model": source.display_name, "peft_method": config.peft_method,
                  "training_method": config.training_method,
                  **({"dpo_beta": config.beta} if config.training_method == "dpo" else {}),
                  **job_output_metadata(MLFLOW_MODEL_OUTPUT)},
    )

    tracking.log_metrics(
        {
            "final_train_loss": summary["train_loss"],
            "final_eval_loss": summary["eval_loss"],
            "train_tokens_per_second": tokens_per_second,
            "padding_ratio": summary["padding_ratio"],
            "merge_parity_max_relative_logit_diff": parity.get("max_relative_logit_diff"),
            "merge_parity_saved_max_relative_logit_diff": (parity.get("saved") or {}).get("max_relative_logit_diff"),
            **validation_metrics(result.validation),
            **{k: v for k, v in summary.items() if k.startswith("peak_")},
        },
        step=result.global_step,
    )
    tracking.set_tags(validation_tags(result.validation))
    log_output_artifacts({"adapter": adapter_dir, MLFLOW_MODEL_OUTPUT: mlflow_dir}, in_azure)
    return summary


def validation_metrics(validation: dict[str, Any]) -> dict[str, Any]:
    """Numbers of what validation decided (MLflow metrics take numbers only)."""
    if validation.get("eval_steps") is None:
        return {}
    return {
        "best_eval_loss": validation["best_eval_loss"],
        "best_step": validation["best_step"],
        "stopped_early": int(validation["stopped_early"]),
        "stopped_at_step": validation["stopped_at_step"],
    }


def validation_tags(validation: dict[str, Any]) -> dict[str, Any]:
    """The same as tags a reader of the run sees first: which checkpoint is the model, and why it stopped."""
    if validation.get("eval_steps") is None:
        return {}
    return {
        "maap.model_checkpoint": validation["model_checkpoint"],
        "maap.stopped_early": str(validation["stopped_early"]).lower(),
        "maap.stop_reason": validation["stop_reason"],
    }

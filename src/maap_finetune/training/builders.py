"""Small builders that turn a `FinetuneConfig` into the objects peft, bitsandbytes, DeepSpeed and
TRL take. Each is a pure function of the config and the run's resolved `TrainingPlan`, tested on its own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.training.config import DORA_METHODS, FinetuneConfig
from maap_finetune.training.plan import TrainingPlan


def torch_dtype(precision: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


def load_deepspeed_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"--deepspeed_config {path}: cannot read ({err.strerror})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"--deepspeed_config {path}, line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise UserError(f"--deepspeed_config {path}: expected a JSON object at the top level")
    return data


def build_deepspeed_config(config: FinetuneConfig) -> dict[str, Any] | None:
    """The DeepSpeed config: the user's JSON when given (it wins), else one generated from the inputs.

    "auto" values are filled by the HF Trainer from the training arguments, so batch size, precision
    and gradient accumulation cannot disagree with the rest of the run. ZeRO-3 gathers 16-bit weights
    on save, without which a LoRA adapter saved under ZeRO-3 is empty.
    """
    if config.deepspeed_config is not None:
        return load_deepspeed_json(config.deepspeed_config)
    if config.deepspeed_stage is None:
        return None
    stage = config.deepspeed_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage >= 2:
        zero.update(overlap_comm=True, contiguous_gradients=True, reduce_bucket_size="auto")
        if config.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
        if config.offload_param:
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
    }


def build_quantization_config(config: FinetuneConfig, plan: TrainingPlan):
    """4-bit NF4 with double quantization and bf16 compute (QLoRA paper); None when not quantized.

    Under ZeRO-3 the 4-bit weights are stored as bf16 so DeepSpeed can shard them (peft's
    "QLoRA with DeepSpeed ZeRO-3" recipe)."""
    if not config.is_quantized:
        return None
    import torch
    from transformers import BitsAndBytesConfig

    kwargs: dict[str, Any] = dict(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    if plan.deepspeed_stage == 3:
        kwargs["bnb_4bit_quant_storage"] = torch.bfloat16
    return BitsAndBytesConfig(**kwargs)


def build_peft_config(config: FinetuneConfig):
    """LoRA / DoRA config; None for a full fine-tune."""
    if not config.uses_adapter:
        return None
    from peft import LoraConfig

    target = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target,
        use_dora=config.peft_method in DORA_METHODS,
        use_rslora=config.use_rslora,
        init_lora_weights=True if config.init_lora_weights == "default" else config.init_lora_weights,
        bias="none",
    )


def build_model_kwargs(config: FinetuneConfig, plan: TrainingPlan) -> dict[str, Any]:
    """Keyword arguments for `AutoModelForCausalLM.from_pretrained`."""
    kwargs: dict[str, Any] = dict(
        dtype=torch_dtype(plan.precision),
        attn_implementation=plan.attn_implementation,
        trust_remote_code=config.trust_remote_code,
    )
    quantization = build_quantization_config(config, plan)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        if plan.deepspeed_stage != 3:
            # Under ZeRO-3 DeepSpeed places the shards; otherwise each process holds its 4-bit copy on its GPU.
            import os

            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return kwargs


def build_sft_config(config: FinetuneConfig, plan: TrainingPlan):
    """TRL's SFTConfig (HF TrainingArguments) from the inputs.

    Checkpoints go to the `checkpoints` output; MLflow logging is ours (`report_to="none"`), so
    the step's run is resumed rather than a new one started by the HF callback. With eval_steps the
    validation loss is the metric for the best checkpoint and for early stopping.
    """
    from trl import SFTConfig

    precision = plan.precision
    sampling = "group_by_length" if config.batching == "group_by_length" else "random"
    return SFTConfig(
        output_dir=str(config.checkpoints),
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_ratio,  # a float below 1 is a ratio of the total steps
        weight_decay=config.weight_decay,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False} if config.gradient_checkpointing else None,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not plan.cuda,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=config.save_steps,
        # Old checkpoints are deleted by checkpoints.CompleteMarkerCallback once a newer one is complete;
        # the Trainer's own rotation runs before the COMPLETE marker and could leave none after a kill.
        save_total_limit=None,
        eval_strategy="no" if config.eval_steps is None else "steps",
        eval_steps=config.eval_steps,
        load_best_model_at_end=config.load_best_model_at_end,
        metric_for_best_model="eval_loss" if config.eval_steps is not None else None,
        greater_is_better=False if config.eval_steps is not None else None,
        # A resumed run continues early stopping's patience count instead of starting it over.
        restore_callback_states_from_checkpoint=True,
        report_to="none",
        disable_tqdm=True,
        deepspeed=plan.ds_config,
        # Examples arrive truncated to max_seq_length (and counted) by training.data; TRL refuses a
        # max_length with padding-free batches, and packing uses it as the row length.
        max_length=None if config.batching == "padding_free" else config.max_seq_length,
        packing=config.batching == "packing",
        packing_strategy="bfd",
        padding_free=config.batching == "padding_free",
        train_sampling_strategy=sampling,
        length_column_name="length",
        dataset_num_proc=None,
        remove_unused_columns=True,
        ddp_find_unused_parameters=False,
        dataloader_pin_memory=plan.cuda,
        # Liger's RMSNorm / SwiGLU / RoPE Triton kernels; TRL keeps its own chunked LM-head loss (which already
        # never materializes the [tokens x vocab] logits) in place of Liger's fused linear cross-entropy.
        use_liger_kernel=plan.use_liger_kernel,
    )


def training_arguments(config: FinetuneConfig, plan: TrainingPlan) -> dict[str, Any]:
    """The SFT run's TrainingArguments as keyword arguments, for another TRL method's config (DPOConfig,
    GRPOConfig): one builder decides checkpoints, precision, logging and evaluation for every method."""
    from dataclasses import fields

    from transformers import TrainingArguments

    sft = build_sft_config(config, plan)
    return {f.name: getattr(sft, f.name) for f in fields(TrainingArguments) if f.init}

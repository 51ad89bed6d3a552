"""Fine-Tune step: LoRA / DoRA / QLoRA / QDoRA / full fine-tune of a causal LM with TRL's SFTTrainer,
preference tuning with its DPOTrainer (training_method dpo, on Data Prep's task preference), or
reinforcement fine-tuning with its GRPOTrainer (training_method grpo, on Data Prep's task rft, rewarded by
the graders file).

Run it as the component does (one process, or N under torchrun / Azure ML PyTorch distribution):

    python finetune.py --train_data prepared/ --model_path tiny-phi3/ --trust_remote_code False \
        --peft_method lora ... --adapter out/adapter --mlflow_model out/mlflow_model --checkpoints out/ckpt
    torchrun --nproc_per_node 2 finetune.py ...   (the same flags)

Every flag is a YAML input of spec.yaml (which holds the defaults); tests build argv from it.
Order: preflight (config only, no weights) -> tokenize -> train (resuming from the latest complete
checkpoint) -> save adapter -> merge + parity check -> MLflow model -> summary, all logged on rank 0.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from maap_finetune.common.cli import StrictParser, bounded, existing_path, str2bool
from maap_finetune.common.errors import UserError, exit_on_user_error
from maap_finetune.training import config as C

log = logging.getLogger("maap_finetune.finetune")


def build_parser() -> StrictParser:
    p = StrictParser(description="Fine-tune a causal LM on prepared chat data (see spec.yaml for defaults).")
    p.add_argument("--train_data", type=existing_path, required=True)
    p.add_argument("--model_path", type=existing_path, default=None)
    p.add_argument("--model_name", type=str, default=None)
    p.add_argument("--trust_remote_code", type=str2bool, required=True)
    p.add_argument("--chat_template", type=existing_path, default=None)
    p.add_argument("--peft_method", choices=C.PEFT_METHODS, required=True)
    p.add_argument("--lora_r", type=bounded(int, 1, 1024), required=True)
    p.add_argument("--lora_alpha", type=bounded(int, 1), required=True)
    p.add_argument("--lora_dropout", type=bounded(float, 0.0, 0.9), required=True)
    p.add_argument("--target_modules", type=C.parse_target_modules, required=True)
    p.add_argument("--use_rslora", type=str2bool, required=True)
    p.add_argument("--init_lora_weights", choices=C.INIT_LORA_WEIGHTS, required=True)
    p.add_argument("--deepspeed_stage", type=bounded(int, 0, 3), default=None)
    p.add_argument("--offload_optimizer", type=str2bool, required=True)
    p.add_argument("--offload_param", type=str2bool, required=True)
    p.add_argument("--deepspeed_config", type=existing_path, default=None)
    p.add_argument("--precision", choices=C.PRECISIONS, required=True)
    p.add_argument("--attn_implementation", choices=C.ATTENTION, required=True)
    p.add_argument("--gradient_checkpointing", type=str2bool, required=True)
    p.add_argument("--epochs", type=bounded(int, 1, 100), required=True)
    p.add_argument("--max_steps", type=bounded(int, 1), default=None)
    p.add_argument("--learning_rate", type=bounded(float, 0.0, 1.0), required=True)
    p.add_argument("--lr_scheduler_type", choices=C.SCHEDULERS, required=True)
    p.add_argument("--warmup_ratio", type=bounded(float, 0.0, 0.5), required=True)
    p.add_argument("--weight_decay", type=bounded(float, 0.0, 1.0), required=True)
    p.add_argument("--per_device_train_batch_size", type=bounded(int, 1), required=True)
    p.add_argument("--gradient_accumulation_steps", type=bounded(int, 1), required=True)
    p.add_argument("--max_seq_length", type=bounded(int, 16), required=True)
    p.add_argument("--train_on_prompt", type=str2bool, required=True)
    p.add_argument("--batching", choices=C.BATCHING, required=True)
    p.add_argument("--training_method", choices=C.TRAINING_METHODS, required=True)
    p.add_argument("--beta", type=bounded(float, 0.001, 10.0), required=True)
    p.add_argument("--loss_type", choices=C.LOSS_TYPES, required=True)
    p.add_argument("--max_prompt_length", type=bounded(int, 1), default=None)
    p.add_argument("--logging_steps", type=bounded(int, 1), required=True)
    p.add_argument("--save_steps", type=bounded(int, 1), required=True)
    p.add_argument("--save_total_limit", type=bounded(int, 1), required=True)
    p.add_argument("--eval_steps", type=bounded(int, 1), default=None)
    p.add_argument("--early_stopping_patience", type=bounded(int, 1), default=None)
    p.add_argument("--early_stopping_threshold", type=bounded(float, 0.0), required=True)
    p.add_argument("--load_best_model_at_end", type=str2bool, required=True)
    p.add_argument("--merge_parity_tolerance", type=bounded(float, 0.0), required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--adapter", type=Path, required=True)
    p.add_argument("--mlflow_model", type=Path, required=True)
    p.add_argument("--checkpoints", type=Path, required=True)
    p.add_argument("--use_liger_kernel", choices=C.LIGER, required=True)
    p.add_argument("--max_tokens_per_batch", type=bounded(int, 16), default=None)
    p.add_argument("--merged_dtype", choices=C.MERGED_DTYPES, required=True)
    p.add_argument("--num_generations", type=bounded(int, 2), required=True)
    p.add_argument("--max_completion_length", type=bounded(int, 1), required=True)
    p.add_argument("--temperature", type=bounded(float, 0.01, 10.0), required=True)
    p.add_argument("--use_vllm", choices=C.USE_VLLM, required=True)
    p.add_argument("--graders", type=existing_path, default=None)
    return p


def parse_args(argv: Sequence[str] | None = None) -> C.FinetuneConfig:
    return C.FinetuneConfig(**vars(build_parser().parse_args(argv)))


def run(config: C.FinetuneConfig) -> dict:
    from transformers import AutoConfig

    from maap_finetune.common import tracking
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.models.hub import fetch_hub_model
    from maap_finetune.models.source import resolve_model_source
    from maap_finetune.training import builders, grpo, outputs, preference, preflight, session
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import resolve_plan

    env = Environment.detect()
    plan = resolve_plan(config, env, builders.build_deepspeed_config(config))  # every `auto` resolved, once
    source = fetch_hub_model(resolve_model_source(config.model_path, config.model_name))
    model_config = AutoConfig.from_pretrained(source.model, trust_remote_code=config.trust_remote_code)
    facts = preflight.read_model_facts(model_config, config.trust_remote_code)
    preflight.preflight(config, env, facts, plan)
    prepared = load_prepared(config.train_data)
    preference.check_data_matches_method(config, prepared)
    if prepared.split_rows["train"] == 0:
        raise UserError(f"{config.train_data}: the train split is empty; nothing to fine-tune on")
    if config.eval_steps is not None and prepared.split_rows["validation"] == 0:
        raise UserError(
            f"{config.train_data}: the validation split is empty, so eval_steps has nothing to evaluate; give "
            "Data Prep a validation_ratio above 0 (or validation_data), or leave eval_steps out"
        )

    with tracking.step_run():
        train = {"dpo": preference.train, "grpo": grpo.train}.get(config.training_method, session.train)
        result = train(config, plan, source, prepared)
        if tracking.is_main_process():
            summary = outputs.write_outputs(config, source, result)
            return summary
    return {}


def main(argv: Sequence[str] | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    started = time.perf_counter()
    summary = run(parse_args(argv))
    log.info("fine-tune finished in %.1f s", time.perf_counter() - started)
    return summary


if __name__ == "__main__":
    exit_on_user_error(main)

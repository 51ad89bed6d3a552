"""One training session: tokenizer, data, model, trainer, resume, train, evaluate, save the adapter.

`run_session` is the skeleton every training method shares; a `TrainingMethod` gives what differs
(SFT here, DPO in `training.preference`).

Every rank runs this; rank 0 alone logs to MLflow (through `maap_finetune.common.tracking`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from maap_finetune.common import tracking
from maap_finetune.common.errors import UserError
from maap_finetune.common.progress import ProgressWriter
from maap_finetune.training import builders
from maap_finetune.training.checkpoints import (
    CompleteMarkerCallback,
    latest_sound_checkpoint,
    remove_partial_checkpoints,
)
from maap_finetune.training.config import FinetuneConfig
from maap_finetune.training.data import TokenizeStats, ensure_chat_template
from maap_finetune.training.monitoring import (
    CountingCollator, MlflowMetricsCallback, ProgressCallback, TokenCounter, release_freed_memory,
)
from maap_finetune.training.validation import best_outcome, build_callbacks
from maap_finetune.training.plan import TrainingPlan, log_plan

log = logging.getLogger(__name__)

PARITY_EXAMPLES = 4
PARITY_MAX_TOKENS = 256


@dataclass
class TrainResult:
    tokenizer: Any
    plan: TrainingPlan
    world_size: int
    train_stats: TokenizeStats
    eval_stats: TokenizeStats
    added_chat_template: bool
    resumed_from: str | None
    resumed_at_step: int
    global_step: int
    epoch: float
    train_runtime_s: float
    train_tokens: int
    train_slots: int
    train_loss: float | None
    final_logged_loss: float | None
    eval_loss: float | None
    trainable_parameters: int
    total_parameters: int
    validation: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    parity_inputs: list[list[int]] = field(default_factory=list)
    trained_logits: list | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific summary fields (training.preference)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _sum_across_ranks(values: list[int], cuda: bool) -> list[int]:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return values
    tensor = torch.tensor(values, dtype=torch.long, device="cuda" if cuda else "cpu")
    dist.all_reduce(tensor)
    return [int(v) for v in tensor.tolist()]


def load_tokenizer(config: FinetuneConfig, source, data_format: str):
    from transformers import AutoTokenizer

    from maap_finetune.data.chat_template import apply_chat_template_file

    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer, trust_remote_code=config.trust_remote_code)
    if apply_chat_template_file(tokenizer, config.chat_template):
        log.info("chat template from %s (saved with the fine-tuned model)", config.chat_template)
    added = ensure_chat_template(tokenizer) if data_format == "messages" else False
    if added:
        log.warning("the base model's tokenizer has no chat template; using the default one (saved with the model)")
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError(f"the tokenizer of {source.display_name} has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
        log.info("the tokenizer has no pad token; padding with its EOS token %r", tokenizer.eos_token)
    return tokenizer, added


def check_function_calling(tokenizer, config: FinetuneConfig, source, prepared, uses_tools=None) -> None:
    """Data with function calling needs a template that renders it; stop before the model loads if not.
    `uses_tools(row)` says whether a row calls tools (default: a chat row's; DPO passes its pairs')."""
    from maap_finetune.data.chat_template import check_tools_support
    from maap_finetune.data.function_calling import row_uses_tools

    uses_tools = uses_tools or row_uses_tools
    for split in ("train", "validation"):
        for line, row in enumerate(prepared.rows(split), start=1):
            if uses_tools(row):
                model = config.chat_template or source.display_name
                check_tools_support(tokenizer, str(model), f"{prepared.split_path(split)} line {line}")
                return


@dataclass
class MethodData:
    """A method's tokenized splits, as its trainer takes them, and their counts."""
    train: Any
    validation: Any  # None when the validation split is empty
    train_stats: TokenizeStats
    eval_stats: TokenizeStats
    train_rows: int
    validation_rows: int
    plan_updates: dict[str, Any] = field(default_factory=dict)


class TrainingMethod:
    """What a training method adds to the shared session (`run_session`), as TRL's trainers add to its
    base trainer: its arguments, data, trainer class and keywords, collator, metrics and summary fields."""

    name = ""
    data_format: str | None = None  # None: the prepared data's own

    def training_args(self, config: FinetuneConfig, plan: TrainingPlan):
        raise NotImplementedError

    def prepare_data(self, tokenizer, config: FinetuneConfig, source, prepared, args) -> MethodData:
        raise NotImplementedError

    def make_trainer(self, plan: TrainingPlan, **kwargs):
        raise NotImplementedError

    def metrics_callback(self, counter: TokenCounter, world: int):
        return MlflowMetricsCallback(counter, world)

    def wrap_collator(self, collator, counter: TokenCounter):
        return CountingCollator(collator, counter)

    def params(self, config: FinetuneConfig) -> dict[str, Any]:
        return {}

    def data_metrics(self, data: MethodData) -> dict[str, float]:
        return {}

    def parity_inputs(self, data: MethodData) -> list[list[int]]:
        raise NotImplementedError

    def summary_extra(self, config: FinetuneConfig, data: MethodData, history: list, final_eval: dict) -> dict:
        return {}


class SupervisedMethod(TrainingMethod):
    """training_method sft: TRL's SFTTrainer on ids and loss masks tokenized once per run."""

    name = "sft"

    def training_args(self, config, plan):
        return builders.build_sft_config(config, plan)

    def prepare_data(self, tokenizer, config, source, prepared, args) -> MethodData:
        from maap_finetune.training.tokenized import tokenize_once

        if prepared.format == "messages":
            check_function_calling(tokenizer, config, source, prepared)
        data = tokenize_once(tokenizer, prepared, config.max_seq_length, config.train_on_prompt, config.checkpoints,
                             args.main_process_first)
        train_examples, eval_examples = data.train, data.validation  # memory-mapped datasets
        if not len(train_examples):
            raise UserError("no training example kept a learnable token; raise max_seq_length")
        if config.eval_steps is not None and not len(eval_examples):
            raise UserError(
                "eval_steps needs validation examples, but the validation split has none with a learnable token; "
                "give Data Prep a validation_ratio above 0 (or validation_data), or leave eval_steps out"
            )
        return MethodData(train_examples, eval_examples if len(eval_examples) else None, data.train_stats,
                          data.eval_stats, len(train_examples), len(eval_examples),
                          {"tokenized_on": data.tokenized_on, "tokenize_seconds": data.seconds})

    def make_trainer(self, plan, **kwargs):
        from trl import SFTTrainer

        return _trainer_class(plan, SFTTrainer)(**kwargs)

    def data_metrics(self, data):
        return {
            "train_examples_truncated": data.train_stats.truncated,
            "train_examples_dropped_no_target": data.train_stats.dropped_no_target,
            "validation_examples_truncated": data.eval_stats.truncated,
        }

    def parity_inputs(self, data):
        source = data.validation if data.validation is not None else data.train
        return [ids[:PARITY_MAX_TOKENS] for ids in source[:PARITY_EXAMPLES]["input_ids"]]


def train(config: FinetuneConfig, plan: TrainingPlan, source, prepared) -> TrainResult:
    return run_session(SupervisedMethod(), config, plan, source, prepared)


def run_session(method: TrainingMethod, config: FinetuneConfig, plan: TrainingPlan, source, prepared) -> TrainResult:
    """The skeleton every method shares: arguments, tokenizer, data, resume, model, callbacks, trainer,
    train, final evaluation, adapter, result."""
    from transformers import set_seed

    # TrainingArguments first: it sets up the process group and, for ZeRO-3, the DeepSpeed config that
    # makes from_pretrained shard weights as they load (zero.Init).
    args = method.training_args(config, plan)
    world = _world_size()
    set_seed(config.seed)

    tokenizer, added_template = load_tokenizer(config, source, method.data_format or prepared.format)
    data = method.prepare_data(tokenizer, config, source, prepared, args)
    plan = replace(plan, **data.plan_updates)

    resume = resume_checkpoint(config)
    model = load_base_model(config, plan, source, args)
    counter = TokenCounter()
    callbacks = training_callbacks(config, counter, world, method.metrics_callback(counter, world))
    trainer = method.make_trainer(
        plan,
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        processing_class=tokenizer,
        peft_config=builders.build_peft_config(config),
        callbacks=callbacks,
    )
    collator = method.wrap_collator(trainer.data_collator, counter)
    if collator is not None:
        trainer.data_collator = collator
    initial_adapter = save_initial_adapter(config, trainer.model)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    _log_start(method, config, plan, source, data, world, trainable)

    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    validation = best_outcome(config, trainer.state, trainer.callback_handler.callbacks)
    if validation["stopped_early"]:
        log.info("%s", validation["stop_reason"])
    if config.load_best_model_at_end:
        log.info("the adapter and merged model are %s's (lowest %s)", validation["model_checkpoint"], "eval_loss")
    tokens, slots = _sum_across_ranks([counter.tokens, counter.slots], plan.cuda)
    final_eval = _final_evaluation(config, trainer, data)
    _save_adapter(config, trainer, initial_adapter)

    result = result_from_trainer(
        trainer, output, plan, resume, method.parity_inputs(data),
        tokenizer=tokenizer,
        world_size=world,
        train_stats=data.train_stats,
        eval_stats=data.eval_stats,
        added_chat_template=added_template,
        train_tokens=tokens,
        train_slots=slots,
        eval_loss=final_eval.get("loss"),
        trainable_parameters=int(trainable),
        total_parameters=int(total),
        validation=validation,
    )
    result.extra = method.summary_extra(config, data, list(trainer.state.log_history), final_eval.get("metrics", {}))
    del trainer, model
    release_freed_memory()  # before the merge loads its own copy of the weights
    _empty_cuda_cache(plan)
    return result


def _log_start(method, config, plan, source, data: MethodData, world: int, trainable: int) -> None:
    tracking.log_params(
        {
            **config.as_params(),
            "base_model": source.display_name,
            **plan.as_params(),
            "world_size": world,
            "train_examples": data.train_rows,
            "validation_examples": data.validation_rows,
            "trainable_parameters": trainable,
            **method.params(config),
        }
    )
    log_plan(plan, config.adapter)
    tracking.log_metrics(method.data_metrics(data))


def _final_evaluation(config: FinetuneConfig, trainer, data: MethodData) -> dict[str, Any]:
    """The loss of the weights we save. With eval_steps the curve already ends with the last step's
    evaluation; under another key this one does not add a second point there."""
    if data.validation is None:
        return {}
    prefix = "eval" if config.eval_steps is None else "final_eval"
    metrics = trainer.evaluate(metric_key_prefix=prefix)
    return {"loss": metrics.get(f"{prefix}_loss"), "metrics": metrics}


def _save_adapter(config: FinetuneConfig, trainer, initial_adapter) -> None:
    if initial_adapter is None:
        trainer.save_model(str(config.adapter))  # every rank: ZeRO-3 gathers the shards here
    elif tracking.is_main_process():
        # PiSSA / OLoRA moved the principal directions out of the base weights; convert the adapter so it
        # applies to the original base (peft's path_initial_model_for_weight_conversion).
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(
            str(config.adapter), path_initial_model_for_weight_conversion=str(initial_adapter)
        )


def resume_checkpoint(config: FinetuneConfig):
    """The newest complete checkpoint whose files all read (None: start afresh); rank 0 first removes partial
    ones and moves damaged ones aside (the other ranks skip them the same way)."""
    main = tracking.is_main_process()
    if main:
        remove_partial_checkpoints(config.checkpoints)
    resume = latest_sound_checkpoint(config.checkpoints, move=main)
    if resume is not None:
        log.info("resuming from %s", resume)
    elif main and any(Path(config.checkpoints).glob("checkpoint-*.damaged*")):
        log.warning("no sound checkpoint in %s: training starts from scratch", config.checkpoints)
    return resume


def load_base_model(config: FinetuneConfig, plan: TrainingPlan, source, args):
    """The base model as the plan says (precision, attention, quantization), ready for PEFT training."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source.model, **builders.build_model_kwargs(config, plan))
    if getattr(source, "hub_id", None):
        # Loaded from a Hub snapshot in the cache: record the id, not the cache path, so the adapter's
        # base_model_name_or_path and the merged model's config name the model users know.
        model.config._name_or_path = source.hub_id
    model.config.use_cache = False  # training: no KV cache (it would also hide packed-sequence boundaries)
    if config.is_quantized and plan.deepspeed_stage != 3:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=config.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
    return model


def training_callbacks(config: FinetuneConfig, counter: TokenCounter, world: int, metrics_callback) -> list:
    """COMPLETE markers, the method's MLflow metrics, validation/early stopping, and live progress when asked."""
    callbacks = [
        CompleteMarkerCallback(config.save_total_limit, keep_best=config.load_best_model_at_end),
        metrics_callback,
        *build_callbacks(config),
    ]
    progress = ProgressWriter()
    if progress.enabled:
        callbacks.append(ProgressCallback(progress, counter, world))
    return callbacks


def result_from_trainer(trainer, output, plan: TrainingPlan, resume, parity_inputs, **fields) -> TrainResult:
    """The TrainResult of a finished run (SFT or DPO): what the trainer's state and history say, plus the
    trained model's logits on `parity_inputs` for the merge check (not under ZeRO-3: no lone forward)."""
    trained_logits = None
    if tracking.is_main_process() and plan.deepspeed_stage != 3:
        from maap_finetune.training.merge import logits_of

        trained_logits = logits_of(trainer.accelerator.unwrap_model(trainer.model).eval(), parity_inputs)
    history = list(trainer.state.log_history)
    logged = [e["loss"] for e in history if "loss" in e]
    return TrainResult(
        plan=plan,
        resumed_from=resume.name if resume else None,
        resumed_at_step=int(resume.name.split("-")[1]) if resume else 0,
        global_step=int(trainer.state.global_step),
        epoch=float(trainer.state.epoch or 0.0),
        train_runtime_s=float(output.metrics.get("train_runtime", 0.0)),
        train_loss=output.metrics.get("train_loss"),
        final_logged_loss=logged[-1] if logged else None,
        log_history=history,
        parity_inputs=parity_inputs,
        trained_logits=trained_logits,
        **fields,
    )


def save_initial_adapter(config: FinetuneConfig, peft_model):
    """For PiSSA / OLoRA, keep the adapter as initialized (once, beside the checkpoints, so a resumed
    run converts against the same one); None for other initializations."""
    if config.init_lora_weights not in ("pissa", "olora"):
        return None
    from pathlib import Path

    folder = Path(config.checkpoints) / "initial_adapter"
    if tracking.is_main_process() and not (folder / "adapter_config.json").is_file():
        peft_config = peft_model.peft_config["default"]
        peft_config.init_lora_weights = True  # peft's recipe: saved as a plain LoRA initialization
        try:
            peft_model.save_pretrained(str(folder))
        finally:
            peft_config.init_lora_weights = config.init_lora_weights
    return folder


def _trainer_class(plan: TrainingPlan, base: type) -> type:
    """SFTTrainer, or its token-budget variant when max_tokens_per_batch is set."""
    if plan.max_tokens_per_batch is None:
        return base
    from maap_finetune.training.batching import token_budget_trainer

    cls = token_budget_trainer(base)
    cls.max_tokens_per_batch = plan.max_tokens_per_batch
    cls.padded_budget = plan.batching != "padding_free"
    return cls


def _empty_cuda_cache(plan: TrainingPlan) -> None:
    if plan.cuda:
        import torch

        torch.cuda.empty_cache()

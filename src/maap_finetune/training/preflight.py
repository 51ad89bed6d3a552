"""One check of the whole fine-tune configuration, run before any weight loads.

It reads only the model's `config.json` (and builds the model on the meta device, which allocates
nothing, to learn its linear layer names), collects every problem with its fix, and raises them
together as `ConfigErrors`. Nothing is silently switched off or rewritten.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from maap_finetune.common.errors import ConfigErrors
from maap_finetune.training.config import FinetuneConfig
from maap_finetune.training.environment import Environment
from maap_finetune.training.plan import TrainingPlan


@dataclass(frozen=True)
class ModelFacts:
    """What preflight needs to know about the base model, read without loading weights."""

    model_type: str
    context_length: int | None
    linear_layer_names: tuple[str, ...]  # leaf names of nn.Linear modules, output head excluded
    native: bool  # implemented in transformers itself (not remote code)


def read_model_facts(model_config: Any, trust_remote_code: bool) -> ModelFacts:
    """Instantiate the architecture on the meta device (no memory) and list its linear layers."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    output = model.get_output_embeddings()
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and module is not output
        }
    )
    context = getattr(model_config, "max_position_embeddings", None)
    # Remote code runs only with trust_remote_code; otherwise transformers' own class is used (Phi-3's
    # config.json still carries an auto_map from before Phi-3 joined transformers).
    remote = trust_remote_code and "AutoModelForCausalLM" in (getattr(model_config, "auto_map", None) or {})
    native = model_config.model_type in CONFIG_MAPPING and not remote
    return ModelFacts(
        model_type=model_config.model_type,
        context_length=int(context) if context else None,
        linear_layer_names=tuple(names),
        native=native,
    )


def _matches(target: str, names: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, target) for name in names)


def preflight(
    config: FinetuneConfig,
    env: Environment,
    model: ModelFacts,
    plan: TrainingPlan,
) -> None:
    """Raise `ConfigErrors` listing every problem in `config` (and its resolved `plan`) for this machine and model."""
    problems: list[str] = []
    add = problems.append
    ds_config = plan.ds_config
    stage = plan.deepspeed_stage

    # --- technique ---------------------------------------------------------------------------
    if config.is_quantized:
        if not env.cuda:
            add(
                f"peft_method {config.peft_method} loads the base in 4 bits with bitsandbytes, which needs a CUDA "
                "GPU; run on a GPU compute cluster or use peft_method lora/dora on this machine"
            )
        if not env.bitsandbytes:
            add(
                f"peft_method {config.peft_method} needs the bitsandbytes package; install it "
                "(pip install 'maap-finetune[gpu]') or use peft_method lora/dora"
            )
        if config.precision in ("fp16", "fp32"):
            add(
                f"peft_method {config.peft_method} computes in bf16 (QLoRA's 4-bit NF4 recipe); set precision bf16 or "
                f"auto instead of {config.precision}"
            )
        if config.init_lora_weights in ("pissa", "olora"):
            add(
                f"init_lora_weights {config.init_lora_weights} rewrites the base weights, which cannot be done on a "
                "4-bit base; use init_lora_weights default or gaussian with QLoRA/QDoRA"
            )
    if config.uses_adapter:
        if config.lora_r <= 0:
            add(f"lora_r must be a positive integer, got {config.lora_r}; 8, 16 or 64 are common")
        if config.lora_alpha <= 0:
            add(f"lora_alpha must be a positive integer, got {config.lora_alpha}; twice lora_r is common")
        if not (0.0 <= config.lora_dropout < 1.0):
            add(f"lora_dropout must be in [0, 1), got {config.lora_dropout}")
        linear = model.linear_layer_names
        if isinstance(config.target_modules, str):
            if config.target_modules != "all-linear":
                add(f"target_modules {config.target_modules!r} is not 'all-linear' or a list of names")
            elif not linear:
                add(f"the {model.model_type} model has no linear layers for target_modules all-linear")
        elif not config.target_modules:
            add(f"target_modules is empty; give all-linear or some of: {', '.join(linear)}")
        else:
            missing = [t for t in config.target_modules if not _matches(t, linear)]
            if missing:
                add(
                    f"target_modules {', '.join(missing)} match{'es' if len(missing) == 1 else ''} no linear layer of "
                    f"this {model.model_type} model; its linear layers are: {', '.join(linear)} (or use all-linear)"
                )
    else:
        if config.use_rslora:
            add("use_rslora applies to adapters; with peft_method none set use_rslora false (or pick lora/dora)")
        if config.init_lora_weights != "default":
            add(
                f"init_lora_weights {config.init_lora_weights} applies to adapters; with peft_method none set it to "
                "default (or pick lora/dora)"
            )

    # --- DeepSpeed ----------------------------------------------------------------------------
    if ds_config is not None:
        source = f"deepspeed_config {config.deepspeed_config}" if config.deepspeed_config else "deepspeed_stage"
        if not env.deepspeed:
            add(f"{source} needs the deepspeed package; install it (pip install 'maap-finetune[gpu]') or leave DeepSpeed out")
        if not env.cuda:
            add(f"{source}: DeepSpeed ZeRO needs CUDA GPUs; leave deepspeed_stage out on CPU (plain DDP over gloo works)")
        zero = ds_config.get("zero_optimization") or {}
        if stage == 3 and config.uses_adapter and zero.get("stage3_gather_16bit_weights_on_model_save") is not True:
            add(
                f"{source}: ZeRO-3 with an adapter saves an empty adapter unless zero_optimization."
                "stage3_gather_16bit_weights_on_model_save is true; set it in your JSON"
            )
        if stage == 3 and config.is_quantized:
            if plan.precision != "bf16":
                add(
                    "4-bit base under ZeRO-3: the quantized weights must be stored in the bf16 compute dtype "
                    "(bnb_4bit_quant_storage); set precision bf16 or auto"
                )
            fp16 = (ds_config.get("fp16") or {}).get("enabled")
            if fp16 is True:
                add(
                    f"{source}: fp16 is enabled, but a 4-bit base under ZeRO-3 stores its weights in bf16; set "
                    'fp16.enabled to false or "auto" and bf16.enabled to true or "auto"'
                )
        if stage == 3 and config.init_lora_weights in ("pissa", "olora"):
            add(
                f"init_lora_weights {config.init_lora_weights} converts the adapter against full base weights at "
                "save time, which ZeRO-3 shards; use deepspeed_stage 2 or init_lora_weights default"
            )
        if stage is not None and stage not in (0, 1, 2, 3):
            add(f"{source}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage}")
    if config.deepspeed_config is None:
        if config.offload_optimizer and (config.deepspeed_stage is None or config.deepspeed_stage < 2):
            add("offload_optimizer needs deepspeed_stage 2 or 3; set deepspeed_stage or set offload_optimizer false")
        if config.offload_param and config.deepspeed_stage != 3:
            add("offload_param needs deepspeed_stage 3; set deepspeed_stage 3 or set offload_param false")

    # --- precision and attention --------------------------------------------------------------
    if config.precision == "fp16" and not env.cuda:
        add("precision fp16 needs a CUDA GPU; use precision auto or fp32 on CPU")
    if config.precision == "bf16" and env.cuda and not env.bf16_supported:
        add("precision bf16 is not supported by this GPU (pre-Ampere); use precision fp16 or auto")
    if config.attn_implementation == "flash_attention_2":
        if not env.flash_attn:
            add("attn_implementation flash_attention_2 needs the flash-attn package; install it or use sdpa")
        if not env.cuda:
            add("attn_implementation flash_attention_2 needs a CUDA GPU; use sdpa on CPU")
        if plan.precision == "fp32":
            add("attn_implementation flash_attention_2 runs in bf16/fp16 only; set precision bf16, fp16 or auto")
    attention = plan.attn_implementation
    if config.batching in ("padding_free", "packing"):
        # transformers builds a per-example (block-diagonal) mask from position_ids for sdpa and eager in
        # the models it implements; flash-attention's varlen kernel does the same for any model.
        if attention != "flash_attention_2" and not model.native:
            add(
                f"batching {config.batching} with {attention} attention would let examples attend to "
                f"each other in this remote-code {model.model_type} model; use attn_implementation flash_attention_2 "
                "or batching group_by_length"
            )

    # --- kernels and batching ------------------------------------------------------------------
    if config.use_liger_kernel == "true":
        missing = [name for name, ok in (("a CUDA GPU", env.cuda), ("the triton package", env.triton),
                                         ("the liger-kernel package", env.liger_kernel)) if not ok]
        if missing:
            add(
                f"use_liger_kernel true needs {', '.join(missing)} (Liger's kernels are Triton GPU kernels); "
                "use the train-gpu environment on a GPU cluster, or set use_liger_kernel auto (on where they run) "
                "or false"
            )
    if config.max_tokens_per_batch is not None:
        if config.batching == "packing":
            add(
                "max_tokens_per_batch does not apply to batching packing, whose rows are already max_seq_length "
                "tokens; use batching padding_free with max_tokens_per_batch, or leave max_tokens_per_batch out"
            )
        elif config.max_tokens_per_batch < config.max_seq_length:
            add(
                f"max_tokens_per_batch {config.max_tokens_per_batch} is below max_seq_length {config.max_seq_length}, "
                "so a longest example would fit in no batch; raise max_tokens_per_batch to at least "
                f"{config.max_seq_length} or lower max_seq_length"
            )

    # --- data and schedule --------------------------------------------------------------------
    if model.context_length is not None and config.max_seq_length > model.context_length:
        add(
            f"max_seq_length {config.max_seq_length} is above the model's context of {model.context_length} tokens; "
            f"set max_seq_length to {model.context_length} or less"
        )

    # --- validation during training, training method ----------------------------------------------
    problems.extend(validation_problems(config))
    from maap_finetune.training.preference import training_method_problems

    problems.extend(training_method_problems(config))
    if plan.use_vllm:
        from maap_finetune.training.plan import vllm_problem

        why = vllm_problem(env)
        if why is not None:
            add(f"use_vllm true: {why}; set use_vllm auto or false to generate with transformers")

    if problems:
        raise ConfigErrors(problems, header="fine-tune preflight found problems; nothing was loaded")


def validation_problems(config: FinetuneConfig) -> list[str]:
    """eval_steps, early stopping and the best checkpoint: what each needs from the others."""
    problems = []
    if config.eval_steps is None:
        for name, value in (("early_stopping_patience", config.early_stopping_patience),
                            ("load_best_model_at_end", config.load_best_model_at_end or None)):
            if value is not None:
                problems.append(
                    f"{name} needs eval_steps (the validation loss it compares is computed every eval_steps "
                    f"steps); set eval_steps, such as {config.save_steps} (save_steps)"
                )
    if config.early_stopping_patience is None and config.early_stopping_threshold > 0:
        problems.append(
            f"early_stopping_threshold {config.early_stopping_threshold} only applies to early stopping; set "
            "early_stopping_patience or leave early_stopping_threshold at 0"
        )
    if config.load_best_model_at_end and config.eval_steps is not None and config.save_steps % config.eval_steps:
        up = -(-config.save_steps // config.eval_steps) * config.eval_steps
        problems.append(
            f"load_best_model_at_end needs save_steps ({config.save_steps}) to be a multiple of eval_steps "
            f"({config.eval_steps}): set save_steps to {up}, or eval_steps to a divisor of {config.save_steps}"
        )
    return problems

"""Preflight (every problem at once, each with its fix) and the config builders, without training."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from maap_finetune.training import builders
from maap_finetune.training.environment import Environment
from maap_finetune.training.plan import resolve_plan
from maap_finetune.training.preflight import ModelFacts, preflight, read_model_facts
from tests.helpers import COMPONENTS_DIR, argv_from_spec, load_entry

CPU = Environment(cuda=False, bf16_supported=False, bitsandbytes=False, deepspeed=False, flash_attn=False)
GPU = Environment(cuda=True, bf16_supported=True, bitsandbytes=True, deepspeed=True, flash_attn=True)
PHI3 = ModelFacts(
    model_type="phi3", context_length=4096, linear_layer_names=("down_proj", "gate_up_proj", "o_proj", "qkv_proj"),
    native=True,
)


def make_config(tmp_path: Path, **overrides):
    """A config exactly as the parser builds it from the YAML defaults."""
    finetune = load_entry("finetune")
    argv = argv_from_spec(
        "finetune", train_data=tmp_path, model_name="microsoft/Phi-3-mini-4k-instruct",
        adapter=tmp_path / "a", mlflow_model=tmp_path / "m", checkpoints=tmp_path / "c",
    )
    return replace(finetune.parse_args(argv), **overrides)


def plan_of(config, env=CPU):
    return resolve_plan(config, env, builders.build_deepspeed_config(config))


def problems_of(config, env=CPU, model=PHI3) -> list[str]:
    try:
        preflight(config, env, model, plan_of(config, env))
    except ConfigErrors as errors:
        return errors.problems
    return []


def test_defaults_pass_on_cpu_and_gpu(tmp_path):
    assert problems_of(make_config(tmp_path)) == []
    assert problems_of(make_config(tmp_path), env=GPU) == []


def test_collects_every_problem_with_its_fix(tmp_path):
    config = make_config(
        tmp_path, peft_method="qlora", attn_implementation="flash_attention_2", target_modules=("q_proj", "o_proj"),
        max_seq_length=8192, offload_optimizer=True, lora_r=0,
    )
    problems = problems_of(config)
    text = "\n".join(problems)
    assert "needs a CUDA GPU" in text and "bitsandbytes" in text  # QLoRA on this CPU machine
    assert "flash-attn package" in text
    assert "target_modules q_proj matches no linear layer" in text  # o_proj exists, so only q_proj is named
    assert "its linear layers are: down_proj, gate_up_proj, o_proj, qkv_proj" in text
    assert "max_seq_length 8192 is above the model's context of 4096" in text
    assert "offload_optimizer needs deepspeed_stage 2 or 3" in text
    assert "lora_r must be a positive integer" in text
    assert len(problems) >= 7


def test_qlora_zero3_needs_gather_and_bf16(tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"zero_optimization": {"stage": 3}, "fp16": {"enabled": True}}))
    config = make_config(tmp_path, peft_method="qlora", deepspeed_config=ds)
    text = "\n".join(problems_of(config, env=GPU))
    assert "stage3_gather_16bit_weights_on_model_save" in text
    assert "fp16 is enabled" in text
    assert "precision bf16" in "\n".join(problems_of(make_config(tmp_path, peft_method="qdora", deepspeed_stage=3,
                                                                 precision="fp16"), env=GPU))
    # The generated ZeRO-3 config has what QLoRA needs.
    assert problems_of(make_config(tmp_path, peft_method="qlora", deepspeed_stage=3, offload_param=True), env=GPU) == []


def test_deepspeed_and_padding_free_rules(tmp_path):
    text = "\n".join(problems_of(make_config(tmp_path, deepspeed_stage=2)))
    assert "deepspeed package" in text and "DeepSpeed ZeRO needs CUDA GPUs" in text
    assert "offload_param needs deepspeed_stage 3" in "\n".join(
        problems_of(make_config(tmp_path, deepspeed_stage=2, offload_param=True), env=GPU)
    )
    remote = replace(PHI3, native=False)
    assert "attend to each other" in "\n".join(problems_of(make_config(tmp_path, batching="padding_free"), model=remote))
    assert problems_of(make_config(tmp_path, batching="padding_free")) == []  # transformers masks per example
    assert "fp16 needs a CUDA GPU" in "\n".join(problems_of(make_config(tmp_path, precision="fp16")))
    assert "peft_method none" in "\n".join(problems_of(make_config(tmp_path, peft_method="none", use_rslora=True)))
    assert "4-bit base" in "\n".join(problems_of(make_config(tmp_path, peft_method="qlora",
                                                             init_lora_weights="pissa"), env=GPU))


def test_model_facts_from_config_without_weights(tiny_model_dir):
    from transformers import AutoConfig

    facts = read_model_facts(AutoConfig.from_pretrained(tiny_model_dir), trust_remote_code=False)
    assert facts.linear_layer_names == PHI3.linear_layer_names  # lm_head excluded
    assert facts.context_length == 4096 and facts.native


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_deepspeed_config_per_stage(tmp_path, stage):
    config = make_config(tmp_path, deepspeed_stage=stage, offload_optimizer=stage >= 2, offload_param=stage == 3)
    ds = builders.build_deepspeed_config(config)
    zero = ds["zero_optimization"]
    assert zero["stage"] == stage
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_accumulation_steps"] == "auto"
    assert ds["bf16"] == {"enabled": "auto"}
    assert ("offload_optimizer" in zero) == (stage >= 2)
    assert ("offload_param" in zero) == (stage == 3)
    assert zero.get("stage3_gather_16bit_weights_on_model_save") is (True if stage == 3 else None)
    json.dumps(ds)  # serializable: it is what DeepSpeed reads


def test_user_deepspeed_json_wins_and_bad_json_names_the_line(tmp_path):
    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}))
    assert builders.build_deepspeed_config(make_config(tmp_path, deepspeed_stage=3, deepspeed_config=user)) == {
        "zero_optimization": {"stage": 1}, "train_micro_batch_size_per_gpu": "auto"}
    user.write_text('{\n  "zero_optimization": {"stage": 3,}\n}\n')
    with pytest.raises(UserError, match=r"ds.json, line 2: invalid JSON"):
        builders.build_deepspeed_config(make_config(tmp_path, deepspeed_config=user))
    assert builders.build_deepspeed_config(make_config(tmp_path)) is None


def test_peft_and_quantization_configs(tmp_path):
    import torch

    lora = builders.build_peft_config(make_config(tmp_path, use_rslora=True, init_lora_weights="pissa"))
    assert lora.r == 16 and lora.lora_alpha == 32 and lora.use_rslora and lora.init_lora_weights == "pissa"
    assert lora.target_modules == "all-linear" and not lora.use_dora
    dora = builders.build_peft_config(make_config(tmp_path, peft_method="qdora", target_modules=("qkv_proj",)))
    assert dora.use_dora and set(dora.target_modules) == {"qkv_proj"} and dora.init_lora_weights is True
    assert builders.build_peft_config(make_config(tmp_path, peft_method="none")) is None

    qlora = make_config(tmp_path, peft_method="qlora", deepspeed_stage=3)
    bnb = builders.build_quantization_config(qlora, plan_of(qlora, GPU))
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_type == "nf4" and bnb.bnb_4bit_use_double_quant
    assert bnb.bnb_4bit_compute_dtype == torch.bfloat16 and bnb.bnb_4bit_quant_storage == torch.bfloat16
    no_zero = make_config(tmp_path, peft_method="qlora")
    plain = builders.build_quantization_config(no_zero, plan_of(no_zero, GPU))
    assert plain.bnb_4bit_quant_storage == torch.uint8
    assert builders.build_quantization_config(make_config(tmp_path), plan_of(make_config(tmp_path), GPU)) is None
    kwargs = builders.build_model_kwargs(no_zero, plan_of(no_zero, GPU))
    assert kwargs["dtype"] == torch.bfloat16 and kwargs["device_map"] == {"": 0} and "quantization_config" in kwargs


def test_sft_config_carries_every_training_input(tmp_path):
    config = make_config(
        tmp_path, max_steps=7, learning_rate=0.003, lr_scheduler_type="linear", warmup_ratio=0.1, weight_decay=0.01,
        gradient_accumulation_steps=3, per_device_train_batch_size=5, seed=7, save_steps=11, save_total_limit=3,
        gradient_checkpointing=True, batching="group_by_length", logging_steps=2,
    )
    args = builders.build_sft_config(config, plan_of(config))
    assert (args.max_steps, args.learning_rate, args.lr_scheduler_type.value) == (7, 0.003, "linear")
    assert (args.warmup_steps, args.weight_decay, args.gradient_accumulation_steps) == (0.1, 0.01, 3)
    assert (args.per_device_train_batch_size, args.seed, args.data_seed) == (5, 7, 7)
    assert (args.save_steps, args.output_dir) == (11, str(tmp_path / "c"))
    assert args.save_total_limit is None  # rotated by CompleteMarkerCallback(config.save_total_limit) instead
    assert args.eval_strategy.value == "no" and not args.load_best_model_at_end  # eval_steps left out
    assert args.gradient_checkpointing and args.logging_steps == 2 and args.report_to == []
    assert args.train_sampling_strategy == "group_by_length" and not args.padding_free and not args.packing
    assert args.max_length == config.max_seq_length and not args.bf16 and not args.fp16
    free = builders.build_sft_config(make_config(tmp_path), plan_of(make_config(tmp_path)))
    assert free.padding_free and free.max_length is None  # examples arrive truncated by training.data
    assert free.train_sampling_strategy == "random" and not free.gradient_checkpointing
    packing = make_config(tmp_path, batching="packing")
    packed = builders.build_sft_config(packing, plan_of(packing))
    assert packed.packing and packed.packing_strategy == "bfd" and packed.max_length == config.max_seq_length


def test_attention_auto(tmp_path):
    config = make_config(tmp_path)
    assert config.attn_implementation == "auto"
    assert plan_of(config, CPU).attn_implementation == "sdpa"
    assert plan_of(config, GPU).attn_implementation == "flash_attention_2"
    assert plan_of(config, replace(GPU, flash_attn=False)).attn_implementation == "sdpa"
    assert plan_of(make_config(tmp_path, precision="fp32"), GPU).attn_implementation == "sdpa"
    assert plan_of(make_config(tmp_path, attn_implementation="eager"), GPU).attn_implementation == "eager"
    assert builders.build_model_kwargs(config, plan_of(config, GPU))["attn_implementation"] == "flash_attention_2"
    # Padding-free on a remote-code model is fine where auto resolves to flash attention's varlen kernel.
    remote = replace(PHI3, native=False)
    assert problems_of(config, env=GPU, model=remote) == []
    assert "attend to each other" in "\n".join(problems_of(config, env=replace(GPU, flash_attn=False), model=remote))


def test_precision_auto(tmp_path):
    config = make_config(tmp_path)
    assert plan_of(config, CPU).precision == "fp32"
    assert plan_of(config, GPU).precision == "bf16"
    assert plan_of(config, replace(GPU, bf16_supported=False)).precision == "fp16"
    assert plan_of(make_config(tmp_path, precision="fp32"), GPU).precision == "fp32"


def test_user_error_exits_2_with_one_message(tmp_path, tiny_model_dir):
    from tests.finetune.conftest import outputs, write_prepared

    prepared = write_prepared(tmp_path / "prepared")
    argv = argv_from_spec("finetune", train_data=prepared, model_path=tiny_model_dir, peft_method="qlora",
                          target_modules="nope_proj", **outputs(tmp_path))
    done = subprocess.run([sys.executable, str(COMPONENTS_DIR / "finetune" / "finetune.py"), *argv],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert "fine-tune preflight found problems" in done.stderr and "nope_proj matches no linear layer" in done.stderr
    assert not (tmp_path / "adapter").exists()  # nothing was loaded or written


def test_validation_settings_reach_the_trainer(tmp_path):
    config = make_config(tmp_path, eval_steps=5, save_steps=10, load_best_model_at_end=True, early_stopping_patience=3)
    assert problems_of(config) == []
    args = builders.build_sft_config(config, plan_of(config))
    assert (args.eval_strategy.value, args.eval_steps, args.load_best_model_at_end) == ("steps", 5, True)
    assert (args.metric_for_best_model, args.greater_is_better) == ("eval_loss", False)
    assert args.restore_callback_states_from_checkpoint  # a resumed run keeps its patience count

    from transformers import EarlyStoppingCallback

    from maap_finetune.training.validation import SaveBestCallback, build_callbacks

    callbacks = build_callbacks(config)
    assert [type(c) for c in callbacks] == [SaveBestCallback, EarlyStoppingCallback]
    assert callbacks[1].early_stopping_patience == 3 and callbacks[1].early_stopping_threshold == 0.0
    assert build_callbacks(make_config(tmp_path)) == []


def test_validation_rules_name_the_fix(tmp_path):
    text = "\n".join(problems_of(make_config(tmp_path, early_stopping_patience=2, load_best_model_at_end=True,
                                             early_stopping_threshold=0.01)))
    assert "early_stopping_patience needs eval_steps" in text and "load_best_model_at_end needs eval_steps" in text
    text = "\n".join(problems_of(make_config(tmp_path, early_stopping_threshold=0.01)))
    assert "early_stopping_threshold 0.01 only applies to early stopping; set early_stopping_patience" in text
    text = "\n".join(problems_of(make_config(tmp_path, eval_steps=30, save_steps=100, load_best_model_at_end=True)))
    assert "save_steps (100) to be a multiple of eval_steps (30): set save_steps to 120" in text
    # eval_steps alone (validation loss on the curve and in MLflow) needs nothing else.
    assert problems_of(make_config(tmp_path, eval_steps=7)) == []

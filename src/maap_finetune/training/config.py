"""The Fine-Tune step's typed configuration.

Built once by the entry script's `parse_args` from flags named exactly as the component's YAML
inputs (the YAML holds every default). Single-field ranges are enforced by the parser; rules that
involve several fields, the hardware or the model are checked together by
`maap_finetune.training.preflight.preflight` before the model loads.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PEFT_METHODS = ("lora", "dora", "qlora", "qdora", "none")
QUANTIZED_METHODS = ("qlora", "qdora")
DORA_METHODS = ("dora", "qdora")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
MERGED_DTYPES = ("auto", "bf16", "fp16", "fp32")  # auto: the base model's stored dtype
ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2")
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
INIT_LORA_WEIGHTS = ("default", "gaussian", "pissa", "olora")
BATCHING = ("padding_free", "group_by_length", "packing", "padded")
LIGER = ("auto", "true", "false")
TRAINING_METHODS = ("sft", "dpo", "grpo")  # no orpo: see maap_finetune.training.preference
# trl 1.16's DPOConfig.loss_type values except exo_pair (it needs label_smoothing > 0, not an input
# here); tests/finetune/test_preference.py compares them with the installed trl's list.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot", "aot_unpaired",
                  "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# trl 1.16's GRPOConfig.loss_type values except luspo (it needs importance_sampling_level sequence, not an
# input here); tests/finetune/test_grpo.py compares them with the installed trl's list.
GRPO_LOSS_TYPES = ("dapo", "grpo", "dr_grpo", "bnpo", "cispo", "sapo", "vespo")
# loss_type auto: each method's TRL default.
DEFAULT_LOSS_TYPES = {"dpo": "sigmoid", "grpo": "dapo"}
LOSS_TYPES = ("auto", *DPO_LOSS_TYPES, *GRPO_LOSS_TYPES)
METHOD_LOSS_TYPES = {"dpo": DPO_LOSS_TYPES, "grpo": GRPO_LOSS_TYPES}
USE_VLLM = ("auto", "true", "false")


@dataclass(frozen=True)
class FinetuneConfig:
    # data and model
    train_data: Path
    model_path: Path | None
    model_name: str | None
    trust_remote_code: bool
    chat_template: Path | None
    # technique
    peft_method: str
    lora_r: int
    lora_alpha: int
    lora_dropout: float
    target_modules: tuple[str, ...] | str  # "all-linear" or explicit names
    use_rslora: bool
    init_lora_weights: str
    # DeepSpeed
    deepspeed_stage: int | None
    offload_optimizer: bool
    offload_param: bool
    deepspeed_config: Path | None
    # compute
    precision: str
    attn_implementation: str
    gradient_checkpointing: bool
    # schedule
    epochs: int
    max_steps: int | None
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    weight_decay: float
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    # data handling
    max_seq_length: int
    train_on_prompt: bool
    batching: str
    # preference tuning (maap_finetune.training.preference)
    training_method: str
    beta: float
    loss_type: str
    max_prompt_length: int | None
    # bookkeeping
    logging_steps: int
    save_steps: int
    save_total_limit: int
    eval_steps: int | None
    early_stopping_patience: int | None
    early_stopping_threshold: float
    load_best_model_at_end: bool
    merge_parity_tolerance: float
    seed: int
    # outputs
    adapter: Path
    mlflow_model: Path
    checkpoints: Path
    # speed (appended: new inputs go at the end of the spec)
    use_liger_kernel: str
    max_tokens_per_batch: int | None
    merged_dtype: str
    # reinforcement fine-tuning (maap_finetune.training.grpo); beta and loss_type above are shared with dpo
    num_generations: int
    max_completion_length: int
    temperature: float
    use_vllm: str
    graders: Path | None

    def __post_init__(self):
        # loss_type auto is the method's TRL default, resolved here so every record shows the loss that ran.
        if self.loss_type == "auto":
            object.__setattr__(self, "loss_type", DEFAULT_LOSS_TYPES.get(self.training_method, "auto"))

    @property
    def is_quantized(self) -> bool:
        return self.peft_method in QUANTIZED_METHODS

    @property
    def uses_adapter(self) -> bool:
        return self.peft_method != "none"

    @property
    def uses_deepspeed(self) -> bool:
        return self.deepspeed_stage is not None or self.deepspeed_config is not None

    def as_params(self) -> dict[str, Any]:
        """The settings worth recording as MLflow params (paths and outputs left out)."""
        skip = {"train_data", "model_path", "chat_template", "adapter", "mlflow_model", "checkpoints", "graders"}
        params = {k: v for k, v in asdict(self).items() if k not in skip and v is not None}
        if isinstance(self.target_modules, tuple):
            params["target_modules"] = ",".join(self.target_modules)
        if self.deepspeed_config is not None:
            params["deepspeed_config"] = Path(self.deepspeed_config).name
        if self.chat_template is not None:
            params["chat_template"] = Path(self.chat_template).name
        if self.graders is not None:
            params["graders"] = Path(self.graders).name
        return params


def parse_target_modules(value: str) -> tuple[str, ...] | str:
    """`all-linear` stays a string (peft's shorthand); anything else is a tuple of module names."""
    value = value.strip()
    if value == "all-linear":
        return value
    names = tuple(part.strip() for part in value.split(",") if part.strip())
    return names

"""The fine-tune run resolved once: every `auto` input turned into what will actually run.

`resolve_plan` is called once per run, before preflight; preflight checks the plan, the builders and
the session read it, and it is logged (MLflow params `plan.*`, the `plan.json` artifact, and
`training_summary.json`) so a user can see what ran, not only what was asked for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from maap_finetune.training.config import FinetuneConfig
from maap_finetune.training.environment import Environment

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class TrainingPlan:
    device: str  # "cuda" or "cpu"
    precision: str  # bf16 | fp16 | fp32
    attn_implementation: str  # sdpa | eager | flash_attention_2
    use_liger_kernel: bool
    batching: str  # padding_free | group_by_length | packing | padded
    max_tokens_per_batch: int | None  # token-budget batches when set, else per_device_train_batch_size examples
    deepspeed_stage: int | None
    ds_config: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # Filled in once the data is tokenized (training.tokenized): "rank 0" (global rank 0 of this attempt; the
    # other ranks memory-map its Arrow files) or "earlier attempt" (a restart reused them); rank 0's seconds.
    tokenized_on: str | None = None
    tokenize_seconds: float | None = None

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("ds_config")
        return data

    def as_params(self) -> dict[str, Any]:
        """MLflow params: `plan.<field>`, None written as "none" so every field shows."""
        return {f"plan.{k}": ("none" if v is None else v) for k, v in self.as_dict().items()}


def resolve_precision(config: FinetuneConfig, env: Environment) -> str:
    """`auto` is the best the hardware supports: bf16 on Ampere+ GPUs, fp16 on older GPUs, fp32 on CPU.
    4-bit bases always compute in bf16 (preflight rejects the other explicit choices)."""
    if config.precision != "auto":
        return config.precision
    if config.is_quantized:
        return "bf16"
    if env.cuda:
        return "bf16" if env.bf16_supported else "fp16"
    return "fp32"


def resolve_attention(config: FinetuneConfig, env: Environment, precision: str) -> str:
    """`auto` is flash_attention_2 where it can run (CUDA, flash-attn installed, bf16/fp16), else sdpa."""
    if config.attn_implementation != "auto":
        return config.attn_implementation
    if env.cuda and env.flash_attn and precision in ("bf16", "fp16"):
        return "flash_attention_2"
    return "sdpa"


def liger_available(env: Environment) -> bool:
    """Liger's kernels are Triton kernels: they run on CUDA GPUs with triton and liger-kernel installed."""
    return env.cuda and env.triton and env.liger_kernel


def resolve_liger(config: FinetuneConfig, env: Environment) -> bool:
    """`auto` is on where the kernels can run; `true` stays true (preflight reports what is missing)."""
    if config.use_liger_kernel == "auto":
        return liger_available(env)
    return config.use_liger_kernel == "true"


def zero_stage(ds_config: dict[str, Any] | None) -> int | None:
    """The ZeRO stage a DeepSpeed config asks for (0 when it names none); None without DeepSpeed."""
    if ds_config is None:
        return None
    stage = (ds_config.get("zero_optimization") or {}).get("stage", 0)
    return int(stage)


def resolve_plan(config: FinetuneConfig, env: Environment, ds_config: dict[str, Any] | None) -> TrainingPlan:
    precision = resolve_precision(config, env)
    return TrainingPlan(
        device="cuda" if env.cuda else "cpu",
        precision=precision,
        attn_implementation=resolve_attention(config, env, precision),
        use_liger_kernel=resolve_liger(config, env),
        batching=config.batching,
        max_tokens_per_batch=config.max_tokens_per_batch,
        deepspeed_stage=zero_stage(ds_config),
        ds_config=ds_config,
    )


def log_plan(plan: TrainingPlan, folder) -> None:
    """Write `plan.json` into `folder` (it travels with the adapter) and log it at the run's root (rank 0)."""
    import json
    from pathlib import Path

    from maap_finetune.common import tracking

    if not tracking.is_main_process():
        return
    path = Path(folder) / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(plan.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tracking.log_artifact(path)

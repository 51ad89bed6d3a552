"""Preference tuning (training_method dpo): TRL's DPOTrainer on Data Prep's `preference` rows.

`DpoMethod` is its part of the shared session (`training.session.run_session`: the same PEFT config,
precision, DeepSpeed config, checkpoints with COMPLETE markers and resume, validation callbacks, outputs),
with these differences:
- With an adapter the reference model is the base with the adapter disabled (TRL's PEFT path), so no
  second copy is loaded; a full fine-tune (peft_method none) loads a frozen reference copy.
- Pairs are tokenized here as TRL does (the prompt rendered with the generation prompt, each answer
  from where prompt and prompt+answer diverge), because trl 1.x dropped DPOConfig.max_prompt_length and
  because TRL's Arrow dataset would give every message every key another row's messages have (a
  `tool_calls: None` a template may render). Prompts longer than max_prompt_length keep their end.
- DPO's own metrics (rewards/chosen, rewards/rejected, rewards/margins, rewards/accuracies,
  logps/chosen, logps/rejected) go to the step's MLflow run at every logging step.

ORPO is not offered: trl 1.16 ships ORPOTrainer only under `trl.experimental`, which TRL says "may
change or be removed in any release without deprecation"; its stable API has DPO and KTO.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from maap_finetune.common import tracking
from maap_finetune.common.errors import UserError
from maap_finetune.training import session
from maap_finetune.training.config import METHOD_LOSS_TYPES, FinetuneConfig
from maap_finetune.training.data import TokenizeStats
from maap_finetune.training.monitoring import CountingCollator, MlflowMetricsCallback
from maap_finetune.training.session import PARITY_EXAMPLES, PARITY_MAX_TOKENS, MethodData, TrainingMethod

log = logging.getLogger(__name__)

DPO_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
               "logps/rejected")
PREFERENCE_FORMAT = "preference"
RFT_TASK = "rft"  # Data Prep's task for reinforcement fine-tuning (maap_finetune.training.grpo)


def training_method_problems(config: FinetuneConfig) -> list[str]:
    """What training_method needs from the other inputs (part of preflight: config only)."""
    problems = []
    if config.training_method == "grpo":
        import os

        from maap_finetune.training.grpo import method_problems

        return method_problems(config, int(os.environ.get("WORLD_SIZE", "1")))
    if config.graders is not None:
        problems.append(f"graders applies to training_method grpo (they reward its completions); leave it out for "
                        f"{config.training_method}, or set training_method grpo")
    if config.use_vllm == "true":
        problems.append(f"use_vllm applies to training_method grpo ({config.training_method} generates nothing); "
                        "set use_vllm auto or false")
    allowed = METHOD_LOSS_TYPES.get(config.training_method, ())
    if config.loss_type != "auto" and config.loss_type not in allowed:
        fix = f"one of {', '.join(allowed)}" if allowed else "auto"
        problems.append(f"loss_type {config.loss_type} is not a {config.training_method} loss; set loss_type {fix}")
    if config.training_method != "dpo":
        if config.max_prompt_length is not None:
            problems.append("max_prompt_length applies to training_method dpo; leave it out for sft")
        return problems
    if config.batching in ("packing", "group_by_length"):
        problems.append(
            f"batching {config.batching} is not available with training_method dpo (TRL's DPOTrainer pads each "
            "batch of pairs); set batching padded"
        )
    if config.max_tokens_per_batch is not None:
        problems.append("max_tokens_per_batch applies to training_method sft (DPO batches pairs of "
                        "per_device_train_batch_size); leave it out")
    if config.train_on_prompt:
        problems.append("train_on_prompt has no meaning with training_method dpo (DPO scores the answers only); "
                        "set train_on_prompt false")
    if config.init_lora_weights in ("pissa", "olora"):
        problems.append(
            f"init_lora_weights {config.init_lora_weights} changes the base weights, so the DPO reference (the base "
            "with the adapter disabled) would not be the starting model; use init_lora_weights default or gaussian"
        )
    if config.max_prompt_length is not None and config.max_prompt_length >= config.max_seq_length:
        problems.append(
            f"max_prompt_length {config.max_prompt_length} leaves no room for the answers within max_seq_length "
            f"{config.max_seq_length}; set it below max_seq_length"
        )
    return problems


def check_data_matches_method(config: FinetuneConfig, prepared) -> None:
    """Preference pairs train with dpo only, and dpo trains on preference pairs only; the same for rft and grpo."""
    where = prepared.root / "metadata.json"
    rft = prepared.task == RFT_TASK
    if rft != (config.training_method == "grpo"):
        raise UserError(
            f"{where}: training_method grpo needs Data Prep task rft (prompts and the fields the graders read), but "
            f"the data is task {prepared.task}; prepare it with task rft, or set training_method sft or dpo"
            if not rft else
            f"{where}: the data is Data Prep task rft (prompts without answers to learn), which training_method "
            f"{config.training_method} cannot learn from; set training_method grpo and give graders"
        )
    if prepared.format == PREFERENCE_FORMAT and config.training_method != "dpo":
        raise UserError(
            f"{where}: the data is preference pairs (Data Prep task preference), which training_method "
            f"{config.training_method} cannot learn from; set training_method dpo"
        )
    if prepared.format != PREFERENCE_FORMAT and config.training_method == "dpo":
        raise UserError(
            f"{where}: training_method dpo needs preference pairs, but the data is task {prepared.task}; prepare "
            "chosen/rejected pairs with Data Prep task preference, or set training_method sft"
        )


# ----- tokenization ------------------------------------------------------------------------------

@dataclass
class PairStats(TokenizeStats):
    prompt_truncated: int = 0  # prompts cut to max_prompt_length (their end kept)
    chosen_tokens: int = 0
    rejected_tokens: int = 0


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def tokenize_pair(tokenizer, row: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) of one row, as TRL's DPOTrainer tokenizes conversations."""
    tools = row.get("tools") or None

    def encode(messages, generation: bool) -> list[int]:
        text = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation)
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = encode(row["prompt"], True)
    chosen = encode(row["prompt"] + row["chosen"], False)
    rejected = encode(row["prompt"] + row["rejected"], False)
    cut = min(_common_prefix(prompt, chosen), _common_prefix(prompt, rejected))
    return prompt[:cut], chosen[cut:], rejected[cut:]


def tokenize_pairs(tokenizer, rows, max_seq_length: int, max_prompt_length: int | None, split: str):
    """Tokenize every pair; cut prompts to `max_prompt_length`; leave out pairs whose prompt fills
    `max_seq_length` (nothing of the answers would be scored); count pairs the collator will cut."""
    stats = PairStats()
    examples = []
    for index, row in enumerate(rows):
        stats.rows += 1
        prompt, chosen, rejected = tokenize_pair(tokenizer, row)
        if max_prompt_length is not None and len(prompt) > max_prompt_length:
            prompt = prompt[-max_prompt_length:]
            stats.prompt_truncated += 1
        if len(prompt) >= max_seq_length:
            stats.dropped_no_target += 1
            stats.dropped_rows.append(index + 1)
            continue
        if len(prompt) + max(len(chosen), len(rejected)) > max_seq_length:
            stats.truncated += 1
        stats.tokens += min(len(prompt) + len(chosen), max_seq_length) + min(len(prompt) + len(rejected),
                                                                            max_seq_length)
        stats.chosen_tokens += len(chosen)
        stats.rejected_tokens += len(rejected)
        stats.target_tokens += len(chosen) + len(rejected)
        examples.append({"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected})
    for count, what in ((stats.prompt_truncated, f"had prompts longer than max_prompt_length {max_prompt_length} "
                         "(their start was cut)"),
                        (stats.truncated, f"were longer than max_seq_length {max_seq_length} (their answers' ends "
                         "are cut)"),
                        (stats.dropped_no_target, f"have prompts that fill max_seq_length {max_seq_length} and are "
                         "left out")):
        if count:
            log.warning("%s: %d of %d pairs %s", split, count, stats.rows, what)
    return examples, stats


class PairCountingCollator(CountingCollator):
    """Count real tokens and padded slots of preference batches (each pair is two sequences)."""

    def __call__(self, examples):
        batch = self.inner(examples)
        self.counter.tokens += int(batch["attention_mask"].sum())
        self.counter.slots += int(batch["input_ids"].numel())
        return batch


class PreferenceMetricsCallback(MlflowMetricsCallback):
    """The SFT metrics plus DPO's rewards, margins, accuracies and log-probabilities (and their eval_ forms)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        super().on_log(args, state, control, logs=logs, **kwargs)
        if not state.is_world_process_zero or not logs or "final_eval_loss" in logs:
            return  # the closing evaluation repeats the last eval_steps one under eval_ names (TRL's prefix)
        names = [*DPO_METRICS, *(f"eval_{name}" for name in DPO_METRICS)]
        tracking.log_metrics({name: logs[name] for name in names if name in logs}, step=state.global_step)


# ----- the session -------------------------------------------------------------------------------

def dpo_config(config: FinetuneConfig, plan):
    """DPOConfig: the SFT run's TrainingArguments (one builder for both) plus DPO's own fields."""
    from trl import DPOConfig

    from maap_finetune.training import builders

    return DPOConfig(
        **builders.training_arguments(config, plan),
        beta=config.beta,
        loss_type=[config.loss_type],
        max_length=config.max_seq_length,  # the collator cuts prompt + answer here (keeping the start)
        precompute_ref_log_probs=False,
    )


def _make_trainer_class():
    from trl import DPOTrainer

    class PreferenceTrainer(DPOTrainer):
        """DPOTrainer taking pairs tokenized by `tokenize_pairs` (see the module docstring)."""

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    return PreferenceTrainer


def _uses_tools(row: dict) -> bool:
    from maap_finetune.data.function_calling import row_uses_tools

    return row_uses_tools({"tools": row.get("tools"), "messages": [*row["prompt"], *row["chosen"], *row["rejected"]]})


class DpoMethod(TrainingMethod):
    """training_method dpo's parts of the shared session (`training.session.run_session`)."""

    name = "dpo"
    data_format = "messages"

    def training_args(self, config, plan):
        return dpo_config(config, plan)

    def prepare_data(self, tokenizer, config, source, prepared, args):
        from datasets import Dataset

        session.check_function_calling(tokenizer, config, source, prepared, uses_tools=_uses_tools)
        train_examples, train_stats = tokenize_pairs(
            tokenizer, prepared.rows("train"), config.max_seq_length, config.max_prompt_length, "train")
        eval_examples, eval_stats = tokenize_pairs(
            tokenizer, prepared.rows("validation"), config.max_seq_length, config.max_prompt_length, "validation")
        if not train_examples:
            raise UserError("no training pair left room for its answers; raise max_seq_length or set "
                            "max_prompt_length")
        if config.eval_steps is not None and not eval_examples:
            raise UserError("eval_steps needs validation pairs, but none left room for its answers; raise "
                            "max_seq_length")
        self.parity_source = (eval_examples or train_examples)[:PARITY_EXAMPLES]
        return MethodData(Dataset.from_list(train_examples),
                          Dataset.from_list(eval_examples) if eval_examples else None,
                          train_stats, eval_stats, len(train_examples), len(eval_examples))

    def make_trainer(self, plan, **kwargs):
        return _make_trainer_class()(**kwargs)

    def metrics_callback(self, counter, world):
        return PreferenceMetricsCallback(counter, world)

    def wrap_collator(self, collator, counter):
        return PairCountingCollator(collator, counter)

    def params(self, config):
        return {"reference_model": _reference_model(config)}

    def data_metrics(self, data):
        return {
            "train_pairs_truncated": data.train_stats.truncated,
            "train_pairs_dropped_prompt_too_long": data.train_stats.dropped_no_target,
            "train_prompts_truncated": data.train_stats.prompt_truncated,
            "validation_pairs_truncated": data.eval_stats.truncated,
        }

    def parity_inputs(self, data):
        return [(e["prompt_ids"] + e["chosen_ids"])[:PARITY_MAX_TOKENS] for e in self.parity_source]

    def summary_extra(self, config, data, history, final_eval):
        last_train = next((e for e in reversed(history) if "rewards/margins" in e), {})
        return summary_extra(config, data.train_stats, last_train, final_eval)


def _reference_model(config: FinetuneConfig) -> str:
    return "base with the adapter disabled" if config.uses_adapter else "frozen copy of the base"


def train(config: FinetuneConfig, plan, source, prepared):
    return session.run_session(DpoMethod(), config, plan, source, prepared)


def summary_extra(config: FinetuneConfig, stats: PairStats, last_train: dict, final_eval: dict) -> dict[str, Any]:
    """training_summary.json's DPO fields: the method and its settings, and the last logged DPO metrics."""
    return {
        "training_method": "dpo",
        "beta": config.beta,
        "loss_type": config.loss_type,
        "max_prompt_length": config.max_prompt_length,
        "reference_model": _reference_model(config),
        "batching": "padded pairs",
        "train_prompts_truncated": stats.prompt_truncated,
        "train_chosen_tokens": stats.chosen_tokens,
        "train_rejected_tokens": stats.rejected_tokens,
        "last_logged": {name: last_train[name] for name in DPO_METRICS if name in last_train},
        "final_eval": {k: v for k, v in final_eval.items() if any(k.endswith(m) for m in DPO_METRICS)},
    }

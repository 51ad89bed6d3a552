"""Reinforcement fine-tuning (training_method grpo): TRL's GRPOTrainer on Data Prep's `rft` rows, rewarded
by graders in Azure OpenAI's RFT grader format (`maap_finetune.graders`).

`GrpoMethod` is its part of the shared session (`training.session.run_session`: the same PEFT config,
precision, DeepSpeed config, checkpoints with COMPLETE markers and resume, validation callbacks, outputs).
- Each prepared row's `messages` (the prompt, ending with a user turn) becomes TRL's conversational
  `prompt`; every other field of the row reaches the reward function as a keyword (TRL's rule), and the
  graders read them as `{{item.<field>}}`.
- The reward of a completion is the graders' combined score; each grader's own mean goes to MLflow too.
- TRL's per-step metrics (reward, reward_std, kl, completions/mean_length, entropy, clip ratios) go to the
  step's MLflow run at every logging step.
- Completions are generated with transformers, or with vLLM in colocate mode (`plan.use_vllm`) on CUDA.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from maap_finetune.common import tracking
from maap_finetune.common.errors import UserError
from maap_finetune.training import session
from maap_finetune.training.config import FinetuneConfig
from maap_finetune.training.data import TokenizeStats
from maap_finetune.training.monitoring import MlflowMetricsCallback
from maap_finetune.training.session import PARITY_EXAMPLES, PARITY_MAX_TOKENS, MethodData, TrainingMethod

log = logging.getLogger(__name__)

# TRL's per-step GRPO metrics worth a curve (the names GRPOTrainer.log writes).
GRPO_METRICS = ("reward", "reward_std", "kl", "entropy", "completions/mean_length", "completions/min_length",
                "completions/max_length", "completions/clipped_ratio", "frac_reward_zero_std",
                "clip_ratio/region_mean")
# Keywords GRPOTrainer adds to the reward function's own (they are not row fields).
TRL_REWARD_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")
REWARD_NAME = "graders"


def generation_batch_problems(config: FinetuneConfig, world_size: int) -> list[str]:
    """TRL's rule: every generation batch (per_device_train_batch_size x processes x
    gradient_accumulation_steps completions) holds whole groups of num_generations; so does each
    evaluation batch (per_device_train_batch_size x processes) when eval_steps is set."""
    n = config.num_generations
    batch = config.per_device_train_batch_size * world_size * config.gradient_accumulation_steps
    problems = []
    if batch % n:
        fits = [g for g in range(2, batch + 1) if batch % g == 0]
        problems.append(
            f"num_generations {n} does not divide the generation batch of {batch} completions "
            f"(per_device_train_batch_size {config.per_device_train_batch_size} x {world_size} process"
            f"{'es' if world_size > 1 else ''} x gradient_accumulation_steps {config.gradient_accumulation_steps}); "
            f"set num_generations to one of {fits or '(none: raise per_device_train_batch_size to 2 or more)'}, "
            f"or per_device_train_batch_size to a multiple of {n}"
        )
    eval_batch = config.per_device_train_batch_size * world_size
    if config.eval_steps is not None and eval_batch % n:
        problems.append(
            f"eval_steps with num_generations {n}: each evaluation batch ({eval_batch} completions: "
            f"per_device_train_batch_size x processes) must hold whole groups; set per_device_train_batch_size to a "
            f"multiple of {n}"
        )
    return problems


def method_problems(config: FinetuneConfig, world_size: int) -> list[str]:
    """What training_method grpo needs from the other inputs (part of preflight: config only)."""
    from maap_finetune.training.config import GRPO_LOSS_TYPES

    problems = generation_batch_problems(config, world_size)
    if config.loss_type not in GRPO_LOSS_TYPES:
        problems.append(f"loss_type {config.loss_type} is not a grpo loss; set loss_type auto (dapo) or one of "
                        f"{', '.join(GRPO_LOSS_TYPES)}")
    if config.graders is None:
        problems.append("training_method grpo needs graders (the RFT grader JSON that scores each completion); "
                        "give graders")
    for name, value in (("max_prompt_length", config.max_prompt_length),
                        ("max_tokens_per_batch", config.max_tokens_per_batch),
                        ("early_stopping_patience", config.early_stopping_patience)):
        if value is not None:
            problems.append(f"{name} does not apply to training_method grpo; leave it out")
    if config.load_best_model_at_end:
        problems.append("load_best_model_at_end picks the lowest eval_loss, and GRPO's loss is its surrogate "
                        "objective, not a quality measure (watch eval_reward); set load_best_model_at_end false")
    if config.batching in ("packing", "group_by_length"):
        problems.append(f"batching {config.batching} does not apply to training_method grpo (TRL pads each batch "
                        "of prompts and completions); set batching padded")
    if config.train_on_prompt:
        problems.append("train_on_prompt has no meaning with training_method grpo (only completions are scored); "
                        "set train_on_prompt false")
    if config.init_lora_weights in ("pissa", "olora"):
        problems.append(f"init_lora_weights {config.init_lora_weights} changes the base weights, so the KL "
                        "reference (the base with the adapter disabled) would not be the starting model; use "
                        "init_lora_weights default or gaussian")
    if config.max_completion_length >= config.max_seq_length:
        problems.append(f"max_completion_length {config.max_completion_length} leaves no room for the prompt within "
                        f"max_seq_length {config.max_seq_length}; set it below max_seq_length")
    return problems


# ----- rewards -----------------------------------------------------------------------------------

def completion_text(completion) -> str:
    """A completion as text: TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return str(completion)


def graders_reward(graders):
    """A TRL reward function: (prompts, completions, **row fields) -> one combined grader score each."""
    from maap_finetune.graders import Sample

    def reward(prompts, completions, **kwargs):
        texts = [completion_text(c) for c in completions]
        fields = {k: v for k, v in kwargs.items() if k not in TRL_REWARD_KWARGS}
        items = [{"messages": prompts[i], **{k: v[i] for k, v in fields.items()}} for i in range(len(texts))]
        grades = graders.grade([Sample(t) for t in texts], items)  # output_json: parsed from the text
        log_metric = kwargs.get("log_metric")
        if log_metric is not None and grades:
            for name in graders.grader_names:
                log_metric(f"graders/{name}", sum(g.scores[name] for g in grades) / len(grades))
        return [float(g.score) for g in grades]

    reward.__name__ = REWARD_NAME
    return reward


# ----- data --------------------------------------------------------------------------------------

@dataclass
class PromptStats(TokenizeStats):
    prompt_tokens_max: int = 0


def load_checked_graders(config: FinetuneConfig, prepared):
    """The graders, with every train and validation row checked against what they read and graded once (an empty
    completion: Graders.preflight), before the model loads."""
    from maap_finetune.graders import load_graders

    graders = load_graders(config.graders)
    problems = []
    for split in ("train", "validation"):
        for line, row in enumerate(prepared.rows(split), start=1):
            problems.extend(graders.row_problems(row, f"{prepared.split_path(split)} line {line}"))
    if problems:
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise UserError(f"graders {config.graders} read fields the data lacks{more}:\n  " + "\n  ".join(problems[:10]))
    for split in ("train", "validation"):  # a python grader that raises or times out on a row stops here
        rows = list(prepared.rows(split))
        graders.preflight(rows, [f"{prepared.split_path(split)} line {n}" for n in range(1, len(rows) + 1)])
    return graders


def prompt_rows(tokenizer, rows, split: str) -> tuple[list[dict[str, Any]], PromptStats, list[list[int]]]:
    """TRL's conversational rows (`prompt` plus the row's other fields) and the prompts' token ids."""
    stats, examples, ids = PromptStats(), [], []
    for row in rows:
        stats.rows += 1
        prompt = tokenizer.apply_chat_template(row["messages"], tools=row.get("tools") or None, tokenize=False,
                                               add_generation_prompt=True)
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        stats.tokens += len(prompt_ids)
        stats.prompt_tokens_max = max(stats.prompt_tokens_max, len(prompt_ids))
        ids.append(prompt_ids)
        examples.append({"prompt": row["messages"], **{k: v for k, v in row.items() if k != "messages"}})
    log.info("%s: %d prompts, longest %d tokens", split, stats.rows, stats.prompt_tokens_max)
    return examples, stats, ids


def _check_prompt_room(config: FinetuneConfig, stats: PromptStats, where) -> None:
    room = config.max_seq_length - config.max_completion_length
    if stats.prompt_tokens_max > room:
        raise UserError(
            f"{where}: a prompt has {stats.prompt_tokens_max} tokens, more than max_seq_length "
            f"{config.max_seq_length} minus max_completion_length {config.max_completion_length} leaves; raise "
            "max_seq_length or shorten the prompts"
        )


# ----- the session -------------------------------------------------------------------------------

def grpo_config(config: FinetuneConfig, plan):
    """GRPOConfig: the SFT run's TrainingArguments (one builder for every method) plus GRPO's own fields."""
    from trl import GRPOConfig

    from maap_finetune.training import builders

    common = builders.training_arguments(config, plan)
    common["remove_unused_columns"] = False  # the row's fields are the graders' `item`
    return GRPOConfig(
        **common,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        temperature=config.temperature,
        beta=config.beta,
        loss_type=config.loss_type,
        use_vllm=plan.use_vllm,
        vllm_mode="colocate",
        shuffle_dataset=True,
    )


class GrpoMetricsCallback(MlflowMetricsCallback):
    """The shared metrics plus TRL's GRPO ones (and their eval_ forms); tokens/s from TRL's token count."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.counter.tokens = int(logs["num_tokens"]) // max(self.world_size, 1)
        super().on_log(args, state, control, logs=logs, **kwargs)
        if not state.is_world_process_zero or not logs or "final_eval_loss" in logs:
            return
        graders = [k for k in logs if k.startswith(("graders/", "eval_graders/"))]
        names = [*GRPO_METRICS, *(f"eval_{name}" for name in GRPO_METRICS), *graders]
        tracking.log_metrics({n: logs[n] for n in names if logs.get(n) is not None}, step=state.global_step)


class GrpoMethod(TrainingMethod):
    """training_method grpo's parts of the shared session."""

    name = "grpo"
    data_format = "messages"

    def training_args(self, config, plan):
        return grpo_config(config, plan)

    def prepare_data(self, tokenizer, config, source, prepared, args):
        from datasets import Dataset

        graders = load_checked_graders(config, prepared)
        session.check_function_calling(tokenizer, config, source, prepared)
        train, train_stats, train_ids = prompt_rows(tokenizer, prepared.rows("train"), "train")
        validation, eval_stats, eval_ids = prompt_rows(tokenizer, prepared.rows("validation"), "validation")
        _check_prompt_room(config, train_stats, prepared.split_path("train"))
        _check_prompt_room(config, eval_stats, prepared.split_path("validation"))
        if config.eval_steps is not None and not validation:
            raise UserError("eval_steps needs validation prompts, but the validation split has none")
        self.reward = graders_reward(graders)
        self.parity_source = (eval_ids or train_ids)[:PARITY_EXAMPLES]
        return MethodData(Dataset.from_list(train), Dataset.from_list(validation) if validation else None,
                          train_stats, eval_stats, len(train), len(validation))

    def make_trainer(self, plan, **kwargs):
        from trl import GRPOTrainer

        return GRPOTrainer(reward_funcs=[self.reward], **kwargs)

    def metrics_callback(self, counter, world):
        return GrpoMetricsCallback(counter, world)

    def wrap_collator(self, collator, counter):
        return None  # GRPO batches prompts and builds the completions itself; TRL counts the tokens

    def params(self, config):
        return {"reward": f"graders {config.graders.name}"}

    def parity_inputs(self, data):
        return [ids[:PARITY_MAX_TOKENS] for ids in self.parity_source]

    def summary_extra(self, config, data, history, final_eval):
        return summary_extra(config, data, history, final_eval)


def train(config: FinetuneConfig, plan, source, prepared):
    return session.run_session(GrpoMethod(), config, plan, source, prepared)


def summary_extra(config: FinetuneConfig, data: MethodData, history: list, final_eval: dict) -> dict[str, Any]:
    """training_summary.json's GRPO fields: the method, its settings, and the first and last logged rewards."""
    logged = [e for e in history if "reward" in e and "step" in e]
    pick = ("reward", "reward_std", "kl", "completions/mean_length")
    return {
        "training_method": "grpo",
        "graders": config.graders.name,
        "beta": config.beta,
        "loss_type": config.loss_type,
        "num_generations": config.num_generations,
        "max_completion_length": config.max_completion_length,
        "temperature": config.temperature,
        "reference_model": "none (beta 0)" if config.beta == 0 else "base with the adapter disabled"
        if config.uses_adapter else "frozen copy of the base",
        "batching": "padded prompts and completions",
        "padding_ratio": None,  # GRPO pads prompts and completions inside TRL; not counted here
        "train_prompt_tokens_max": data.train_stats.prompt_tokens_max,
        "first_logged": {k: logged[0][k] for k in pick if k in logged[0]} if logged else {},
        "last_logged": {k: logged[-1][k] for k in pick if k in logged[-1]} if logged else {},
        "final_eval": {k: v for k, v in final_eval.items() if k.endswith(("_reward", "_kl", "mean_length"))},
    }

"""training_method grpo: TRL's GRPOTrainer through Fine-Tune, rewarded by RFT graders. The inputs against the
installed trl, the loss on a fixed batch against GRPO's formula by hand, the refusals before the model loads,
a short CPU run whose reward rises with MLflow curves, and resume from a checkpoint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry, load_spec, write_prepared_splits

SAMPLE_DIR = Path(__file__).resolve().parents[2] / "data" / "sample"
SAMPLE = SAMPLE_DIR / "rft.jsonl"
GRADERS = SAMPLE_DIR / "graders.json"
# The sample's settings for the tiny random model (see the README): TRL refuses LoRA on lm_head for GRPO, and
# LoRA elsewhere barely moves a random 64-wide model's token log-probabilities.
FAST = dict(peft_method="none", learning_rate=0.01, num_generations=8, per_device_train_batch_size=16,
            max_completion_length=4)


def write_prepared_rft(folder: Path, rows: list[dict] | None = None, held_out: int = 12) -> Path:
    """Data Prep's rft contract: `messages` (the prompt) plus the row's other fields."""
    rows = rows if rows is not None else [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    return write_prepared_splits(folder, rows, held_out, task="rft", data_format="messages")


@pytest.fixture(scope="module")
def prepared_rft(tmp_path_factory) -> Path:
    return write_prepared_rft(tmp_path_factory.mktemp("rft"))


def _grpo_argv(tmp_path, data, model, **values):
    values.setdefault("training_method", "grpo")
    values.setdefault("graders", GRADERS)
    values.setdefault("max_completion_length", 16)
    return argv_from_spec("finetune", train_data=data, model_path=model, max_seq_length=256, **outputs(tmp_path),
                          **values)


def test_grpo_inputs_are_the_installed_trl_lists():
    import importlib.util

    from trl import GRPOConfig

    from maap_finetune.training.config import GRPO_LOSS_TYPES
    from maap_finetune.training.plan import VLLM_RANGE

    trl_help = GRPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_list = re.findall(r"'([a-z_]+)'", trl_help.split(". ")[0] + trl_help.split(". ")[1])
    assert set(GRPO_LOSS_TYPES) == set(trl_list) - {"luspo"}  # luspo needs sequence-level importance sampling
    assert GRPOConfig.__dataclass_fields__["loss_type"].default == "dapo"  # what loss_type auto gives
    source = Path(importlib.util.find_spec("trl.import_utils").origin).read_text()
    assert f'Version("{VLLM_RANGE[0]}") <= _vllm_base_version <= Version("{VLLM_RANGE[1]}")' in source
    spec = load_spec("finetune")["inputs"]
    assert "grpo" in spec["training_method"]["enum"] and set(GRPO_LOSS_TYPES) <= set(spec["loss_type"]["enum"])


def test_configured_loss_type_and_beta_reach_trl(tmp_path, tiny_model_dir, prepared_rft):
    from maap_finetune.training import grpo
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import resolve_plan

    config = load_entry("finetune").parse_args(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, loss_type="bnpo",
                                                          beta=0.3, temperature=0.7, num_generations=2))
    args = grpo.grpo_config(config, resolve_plan(config, Environment.detect(), None))
    assert (args.loss_type, args.beta, args.temperature, args.num_generations) == ("bnpo", 0.3, 0.7, 2)
    assert args.use_vllm is False and args.remove_unused_columns is False
    auto = load_entry("finetune").parse_args(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir))
    assert auto.loss_type == "dapo"  # auto: TRL's default, recorded as what ran


def test_use_vllm_auto_is_on_only_with_cuda_and_a_vllm_in_trls_range(tmp_path, prepared_rft):
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import resolve_vllm, vllm_problem

    config = load_entry("finetune").parse_args(_grpo_argv(tmp_path, prepared_rft, tmp_path))
    gpu = dict(cuda=True, bf16_supported=True, bitsandbytes=False, deepspeed=False, flash_attn=False)
    cpu = Environment(**{**gpu, "cuda": False, "bf16_supported": False}, vllm_version="0.30.0")
    broken = Environment(**gpu, vllm_version="0.30.0", vllm_import_error="ImportError: libcudart.so.12: not found")
    for env, on, why in ((Environment(**gpu, vllm_version="0.30.0+cu129"), True, None),
                         (Environment(**gpu, vllm_version="0.33.0"), False, "outside TRL's supported 0.22.0 to 0.31.0"),
                         (Environment(**gpu), False, "vllm is not installed"),
                         (broken, False, "vllm 0.30.0 is installed but does not import (ImportError: libcudart.so.12"),
                         (cpu, False, "CUDA GPUs only")):
        assert resolve_vllm(config, env) is on
        assert (vllm_problem(env) is None) if why is None else why in vllm_problem(env)
    missing = vllm_problem(Environment(**gpu))
    assert "use the rft-gpu environment, which pins vllm 0.30.0" in missing
    sft = load_entry("finetune").parse_args(_grpo_argv(tmp_path, prepared_rft, tmp_path, training_method="sft",
                                                       graders=None))
    assert resolve_vllm(sft, Environment(**gpu, vllm_version="0.30.0")) is False  # sft generates nothing


def test_vllm_import_is_tried_only_where_it_could_run_and_its_failure_is_the_reason():
    from maap_finetune.training import environment

    assert environment._import_error("json") is None
    assert environment._import_error("maap_no_such_module").startswith("ModuleNotFoundError: No module named")
    detected = environment.Environment.detect()  # this machine: no CUDA, so vllm is not imported
    assert detected.cuda or detected.vllm_import_error is None


def _hand_grpo_loss(logps, old, ref, advantages, mask, beta, eps, loss_type, max_completion_length, num_items):
    """GRPO's clipped objective with a k3 KL penalty (importance-weighted by the ratio: trl's default
    use_bias_correction_kl), token by token, then each loss_type's aggregation."""
    import torch

    ratio = torch.exp(logps - old)
    a = advantages.unsqueeze(1)
    per_token = -torch.min(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
    per_token = per_token + beta * (torch.exp(ref - logps) - (ref - logps) - 1) * ratio
    masked = per_token * mask
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum()
    if loss_type == "dr_grpo":
        return masked.sum() / (mask.size(0) * max_completion_length)
    if loss_type == "dapo":
        return masked.sum() / num_items
    raise ValueError(loss_type)


@pytest.mark.parametrize("loss_type", ["grpo", "bnpo", "dr_grpo", "dapo"])
def test_grpo_loss_on_a_fixed_batch_matches_the_formula_by_hand(tmp_path, tiny_model_dir, prepared_rft, loss_type):
    """TRL's loss for our configured loss_type/beta on a fixed batch (old and reference log-probs chosen so the
    ratio is clipped for some tokens) against the formula computed from the policy's own log-probs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.graders import load_graders
    from maap_finetune.training import builders, grpo
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import resolve_plan

    beta = 0.2
    config = load_entry("finetune").parse_args(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, beta=beta,
                                                          loss_type=loss_type, max_completion_length=6,
                                                          num_generations=2, lora_dropout=0.0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows, _, _ = grpo.prompt_rows(tokenizer, [json.loads(SAMPLE.read_text().splitlines()[0])], "train")
    from datasets import Dataset

    trainer = __import__("trl").GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        reward_funcs=[grpo.graders_reward(load_graders(GRADERS))],
        args=grpo.grpo_config(config, resolve_plan(config, Environment.detect(), None)),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        peft_config=builders.build_peft_config(config))
    assert (trainer.loss_type, trainer.beta) == (loss_type, beta)
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference (LoRA starts as a no-op)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model = trainer.model.train()
    prompt_ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 10]])
    completion_ids = torch.tensor([[11, 12, 13, 14, 15, 0], [16, 17, 18, 0, 0, 0]])
    completion_mask = (completion_ids != 0).long()
    mask = torch.cat([torch.ones_like(prompt_ids), completion_mask], 1)
    with torch.no_grad():
        logits = model(input_ids=torch.cat([prompt_ids, completion_ids], 1), attention_mask=mask).logits[:, 3:-1]
        logps = torch.log_softmax(logits.float(), -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    old = logps - torch.tensor([0.0, 0.5, -0.5, 0.1, 0.3, 0.0]).repeat(2, 1)  # ratios e^0.5 and e^-0.5 clip
    ref = logps + 0.25
    advantages = torch.tensor([1.0, -0.5])
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old,
              "ref_per_token_logps": ref, "num_items_in_batch": completion_mask.sum()}
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train for each accumulation window
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, inputs))
    # gradient_accumulation_steps 1, steps_per_generation 1, one process: no extra scaling
    expected = float(_hand_grpo_loss(logps, old, ref, advantages, completion_mask.float(), beta, 0.2, loss_type,
                                     6, completion_mask.sum()))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert trainer._metrics["train"]["kl"][-1] > 0  # the KL term is in, and logged


def test_num_generations_that_does_not_divide_the_batch_is_refused_before_the_model_loads(
        tmp_path, tiny_model_dir, prepared_rft):
    with pytest.raises(ConfigErrors) as info:
        load_entry("finetune").main(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, num_generations=3,
                                               per_device_train_batch_size=4, gradient_accumulation_steps=1))
    text = "\n".join(info.value.problems)
    assert "num_generations 3 does not divide the generation batch of 4 completions" in text
    assert "set num_generations to one of [2, 4]" in text
    assert not (tmp_path / "checkpoints").exists()


def test_grpo_refuses_what_it_cannot_combine(tmp_path, tiny_model_dir, prepared_rft):
    argv = _grpo_argv(tmp_path, prepared_rft, tiny_model_dir, graders=None, loss_type="sigmoid",
                      load_best_model_at_end=True, eval_steps=5, save_steps=5, batching="packing",
                      use_vllm="true", max_completion_length=300)
    with pytest.raises(ConfigErrors) as info:
        load_entry("finetune").main(argv)
    text = "\n".join(info.value.problems)
    for fragment in ("training_method grpo needs graders", "loss_type sigmoid is not a grpo loss",
                     "load_best_model_at_end picks the lowest eval_loss", "batching packing does not apply",
                     "use_vllm true: vLLM generates on CUDA GPUs only and this machine has none",
                     "max_completion_length 300 leaves no room for the prompt within max_seq_length 256"):
        assert fragment in text, text
    with pytest.raises(ConfigErrors, match="graders applies to training_method grpo"):
        load_entry("finetune").main(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, training_method="sft"))


def test_data_and_method_must_match(tmp_path, tiny_model_dir, prepared_rft, prepared_chat):
    with pytest.raises(UserError, match="the data is Data Prep task rft .* set training_method grpo"):
        load_entry("finetune").main(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, training_method="sft",
                                               graders=None))
    with pytest.raises(UserError, match="training_method grpo needs Data Prep task rft .* the data is task chat"):
        load_entry("finetune").main(_grpo_argv(tmp_path, prepared_chat, tiny_model_dir))


def test_a_row_missing_a_grader_field_is_refused_naming_file_line_and_grader(tmp_path, tiny_model_dir,
                                                                             mlflow_tracking):
    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    del rows[30]["must_contain"]  # train.jsonl line 7 (24 rows held out)
    data = write_prepared_rft(tmp_path / "prepared", rows)
    with pytest.raises(UserError) as info:
        load_entry("finetune").main(_grpo_argv(tmp_path, data, tiny_model_dir))
    message = str(info.value)
    assert "train.jsonl line 7: field 'must_contain' missing, read by grader 'acknowledged'" in message
    assert str(GRADERS) in message
    assert not (tmp_path / "checkpoints").exists()


def _grpo_run(tmp_path, data, model, monkeypatch, attempt: int = 1, **values):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"grpo-{tmp_path.name}-{attempt}")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    summary = load_entry("finetune").main(_grpo_argv(tmp_path, data, model, **values))
    return summary, client, run_id


def test_short_cpu_grpo_run_raises_the_reward_and_logs_trl_metrics(tmp_path, tiny_model_dir, prepared_rft,
                                                                   mlflow_tracking, monkeypatch):
    summary, client, run_id = _grpo_run(tmp_path, prepared_rft, tiny_model_dir, monkeypatch, **FAST, max_steps=30,
                                        logging_steps=5, seed=0)
    assert summary["training_method"] == "grpo" and summary["loss_type"] == "dapo" and summary["steps"] == 30
    assert summary["plan"]["use_vllm"] is False and summary["peft_method"] == "none"  # FAST: nothing to merge
    for name in ("reward", "kl", "completions/mean_length", "graders/acknowledged"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == [1, 5, 10, 15, 20, 25, 30], (name, steps)
    rewards = [m.value for m in sorted(client.get_metric_history(run_id, "reward"), key=lambda m: m.step)]
    assert sum(rewards[-2:]) / 2 > rewards[0] + 0.2, rewards
    assert summary["final_eval"]["eval_reward"] > summary["first_logged"]["reward"]
    assert "training_method: grpo" in (tmp_path / "mlflow_model" / "MLmodel").read_text()


def test_grpo_resumes_from_its_latest_complete_checkpoint(tmp_path, tiny_model_dir, prepared_rft, mlflow_tracking,
                                                          monkeypatch):
    values = dict(FAST, save_steps=2, logging_steps=1)
    first, _, _ = _grpo_run(tmp_path, prepared_rft, tiny_model_dir, monkeypatch, max_steps=4, **values)
    assert first["steps"] == 4 and (tmp_path / "checkpoints" / "checkpoint-4" / "COMPLETE").exists()
    second, _, _ = _grpo_run(tmp_path, prepared_rft, tiny_model_dir, monkeypatch, attempt=2, max_steps=6, **values)
    assert second["resumed_from_checkpoint"] == "checkpoint-4" and second["resumed_at_step"] == 4
    assert second["steps"] == 6 and second["steps_this_run"] == 2


def test_a_python_grader_that_raises_is_refused_before_the_model_loads(tmp_path, tiny_model_dir, prepared_rft,
                                                                       mlflow_tracking):
    graders = tmp_path / "graders.json"
    graders.write_text(json.dumps({"type": "python", "name": "strict", "source": (
        "def grade(sample, item):\n    if item['must_contain'] == 'k':\n        raise ValueError('no k here')\n"
        "    return 1.0\n")}))
    with pytest.raises(UserError) as info:
        load_entry("finetune").main(_grpo_argv(tmp_path, prepared_rft, tiny_model_dir, graders=graders))
    message = str(info.value)
    assert "strict" in message and "train.jsonl line 1" in message and "no k here" in message, message
    assert not (tmp_path / "checkpoints").exists()

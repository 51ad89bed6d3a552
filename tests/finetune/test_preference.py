"""training_method dpo: TRL's DPOTrainer through Fine-Tune. The loss against a hand computation, the
inputs against the installed trl, the checks between data and method, MLflow metrics, chaining on a
registered SFT model, and resume after SIGKILL."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from tests.finetune.conftest import outputs
from tests.finetune.test_resume_and_distributed import SCRIPT, _complete, _env
from tests.helpers import argv_from_spec, load_entry, load_spec, write_prepared_splits

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "preference.jsonl"


def write_prepared_pairs(folder: Path, held_out: int = 10, rows: list[dict] | None = None) -> Path:
    """Data Prep's preference contract from `rows` (prompt/chosen/rejected) or the sample (Azure OpenAI rows,
    normalized as Data Prep does)."""
    if rows is None:
        rows = []
        for line in SAMPLE.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows.append({"prompt": row["input"]["messages"], "chosen": row["preferred_output"],
                         "rejected": row["non_preferred_output"]})
    return write_prepared_splits(folder, rows, held_out, task="preference", data_format="preference")


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory) -> Path:
    return write_prepared_pairs(tmp_path_factory.mktemp("pairs"))


def _dpo_argv(tmp_path, data, model, **values):
    values.setdefault("training_method", "dpo")
    return argv_from_spec("finetune", train_data=data, model_path=model, max_seq_length=256, **outputs(tmp_path),
                          **values)


def test_loss_types_are_the_installed_trl_list():
    from trl import DPOConfig

    from maap_finetune.training.config import DPO_LOSS_TYPES, LOSS_TYPES

    trl_help = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    trl_list = re.findall(r"`'([a-z_]+)'`", trl_help.split("If multiple")[0])
    assert set(DPO_LOSS_TYPES) == set(trl_list) - {"exo_pair"}  # exo_pair needs label_smoothing, not an input
    assert load_spec("finetune")["inputs"]["loss_type"]["enum"] == list(LOSS_TYPES)  # auto, dpo's, grpo's


def test_orpo_is_not_in_trl_stable_api():
    """The reason training_method has no orpo: trl ships it only under trl.experimental."""
    import trl

    assert not hasattr(trl, "ORPOTrainer") and "ORPOTrainer" not in dir(trl)
    assert "orpo" not in load_spec("finetune")["inputs"]["training_method"]["enum"]


def test_preference_data_with_sft_is_refused_before_the_model_loads(tmp_path, tiny_model_dir, prepared_pairs):
    with pytest.raises(UserError, match="training_method sft cannot learn from; set training_method dpo"):
        load_entry("finetune").main(_dpo_argv(tmp_path, prepared_pairs, tiny_model_dir, training_method="sft"))


def test_dpo_with_chat_data_is_refused(tmp_path, tiny_model_dir, prepared_chat):
    with pytest.raises(UserError, match="training_method dpo needs preference pairs, but the data is task chat"):
        load_entry("finetune").main(_dpo_argv(tmp_path, prepared_chat, tiny_model_dir))


def test_preflight_lists_what_dpo_cannot_combine(tmp_path, tiny_model_dir, prepared_pairs):
    argv = _dpo_argv(tmp_path, prepared_pairs, tiny_model_dir, batching="packing", train_on_prompt=True,
                     init_lora_weights="pissa", max_prompt_length=256)
    with pytest.raises(ConfigErrors) as info:
        load_entry("finetune").main(argv)
    text = "\n".join(info.value.problems)
    for fragment in ("batching packing is not available with training_method dpo",
                     "train_on_prompt has no meaning with training_method dpo",
                     "init_lora_weights pissa changes the base weights",
                     "max_prompt_length 256 leaves no room for the answers within max_seq_length 256"):
        assert fragment in text, text
    with pytest.raises(ConfigErrors, match="max_prompt_length applies to training_method dpo"):
        load_entry("finetune").main(_dpo_argv(tmp_path, prepared_pairs, tiny_model_dir, training_method="sft",
                                              max_prompt_length=64))


def test_dpo_loss_matches_a_hand_computation_on_two_pairs(tmp_path, tiny_model_dir, prepared_pairs):
    """Policy and reference log-probabilities computed directly; DPO's sigmoid loss by hand."""
    import torch
    import torch.nn.functional as F
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.training import builders, preference
    from maap_finetune.training.environment import Environment
    from maap_finetune.training.plan import resolve_plan

    beta = 0.25
    config = load_entry("finetune").parse_args(_dpo_argv(tmp_path, prepared_pairs, tiny_model_dir, beta=beta,
                                                         lora_dropout=0.0))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (prepared_pairs / "train.jsonl").read_text().splitlines()[:2]]
    examples, _ = preference.tokenize_pairs(tokenizer, rows, config.max_seq_length, None, "train")
    args = preference.dpo_config(config, resolve_plan(config, Environment.detect(), None))
    trainer = preference._make_trainer_class()(
        model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args,
        train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
        peft_config=builders.build_peft_config(config),
    )
    torch.manual_seed(0)
    with torch.no_grad():  # move the policy away from the reference (LoRA starts as a no-op)
        for name, param in trainer.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
    model = trainer.model.eval()

    def logp(ids: list[int], start: int, disable_adapter: bool) -> float:
        with torch.no_grad():
            if disable_adapter:
                with model.disable_adapter():
                    logits = model(input_ids=torch.tensor([ids])).logits[0]
            else:
                logits = model(input_ids=torch.tensor([ids])).logits[0]
        logps = torch.log_softmax(logits.float(), dim=-1)
        return float(sum(logps[t - 1, ids[t]] for t in range(start, len(ids))))

    losses = []
    for example in examples:
        prompt = example["prompt_ids"]
        chosen, rejected = prompt + example["chosen_ids"], prompt + example["rejected_ids"]
        margin = (logp(chosen, len(prompt), False) - logp(chosen, len(prompt), True)) - (
            logp(rejected, len(prompt), False) - logp(rejected, len(prompt), True))
        losses.append(float(-F.logsigmoid(torch.tensor(beta * margin))))
    expected = sum(losses) / len(losses)

    batch = trainer.data_collator(examples)
    with torch.no_grad():
        loss = float(trainer.compute_loss(model, batch))
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert expected != pytest.approx(float(-F.logsigmoid(torch.tensor(0.0))), abs=1e-4)  # the adapter did move


def _dpo_run(tmp_path, data, model, monkeypatch, **values):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment(f"dpo-{tmp_path.name}")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    summary = load_entry("finetune").main(_dpo_argv(tmp_path, data, model, **values))
    return summary, client, run_id


def test_dpo_logs_rewards_per_logging_step_and_improves_the_margin(tmp_path, tiny_model_dir, prepared_pairs,
                                                                   mlflow_tracking, monkeypatch):
    summary, client, run_id = _dpo_run(tmp_path, prepared_pairs, tiny_model_dir, monkeypatch, learning_rate=0.005,
                                       max_steps=20, logging_steps=5, eval_steps=10)
    assert summary["training_method"] == "dpo" and summary["beta"] == 0.1 and summary["loss_type"] == "sigmoid"
    assert summary["reference_model"] == "base with the adapter disabled"
    assert summary["merge_parity"]["passed"] and summary["steps"] == 20
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                 "logps/rejected"):
        steps = [m.step for m in client.get_metric_history(run_id, name)]
        assert steps == [1, 5, 10, 15, 20], (name, steps)  # logging_first_step, then every logging_steps
    margins = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "rewards/margins"))
    assert margins[0][1] == pytest.approx(0.0, abs=1e-6)  # step 1: the policy is still the reference
    assert margins[-1][1] > 0.1
    evals = [m.step for m in client.get_metric_history(run_id, "eval_rewards/accuracies")]
    assert evals == [10, 20]
    metadata = (tmp_path / "mlflow_model" / "MLmodel").read_text()
    assert "training_method: dpo" in metadata and "dpo_beta: 0.1" in metadata


def test_max_prompt_length_keeps_the_end_of_the_prompt(tiny_model_dir, prepared_pairs):
    from transformers import AutoTokenizer

    from maap_finetune.training.preference import tokenize_pair, tokenize_pairs

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [json.loads(line) for line in (prepared_pairs / "train.jsonl").read_text().splitlines()[:5]]
    examples, stats = tokenize_pairs(tokenizer, rows, 256, 8, "train")
    assert stats.prompt_truncated == 5
    for row, example in zip(rows, examples):
        prompt, chosen, rejected = tokenize_pair(tokenizer, row)
        assert example["prompt_ids"] == prompt[-8:]
        assert (example["chosen_ids"], example["rejected_ids"]) == (chosen, rejected)


def test_dpo_on_a_registered_sft_model(tmp_path, tiny_model_dir, prepared_chat, prepared_pairs, mlflow_tracking,
                                       monkeypatch):
    """Chaining: SFT, register in the local registry, then DPO with model_path resolved from models:/...;
    the reference (adapter disabled) is the SFT model, not the tiny base."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from maap_finetune.registry.local import register_local
    from maap_finetune.registry.tags import PIPELINE_RUN_TAG
    from maap_finetune.training.preference import tokenize_pair
    from pipelines.local.defaults import registered_model_folder

    sft_out = tmp_path / "sft"
    load_entry("finetune").main(argv_from_spec("finetune", train_data=prepared_chat, model_path=tiny_model_dir,
                                               learning_rate=0.005, max_steps=10, max_seq_length=256,
                                               **outputs(sft_out)))
    client = MlflowClient()
    with mlflow.start_run(experiment_id=client.create_experiment("register")) as run:
        info = register_local(sft_out / "mlflow_model", "support-sft", {PIPELINE_RUN_TAG: "p1"}, "SFT", run)
    assert info.uri == "models:/support-sft/1"
    sft_folder = registered_model_folder(info.uri, mlflow_tracking, tmp_path / "registered")

    dpo_out = tmp_path / "dpo"
    summary, _, _ = _dpo_run(dpo_out, prepared_pairs, sft_folder, monkeypatch, learning_rate=0.005, max_steps=4)
    assert summary["steps"] == 4 and summary["merge_parity"]["passed"]
    adapter_config = json.loads((dpo_out / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(sft_folder / "model")

    # The reference the DPO run scored against: log-probabilities of the SFT model, which differ from the base's.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = json.loads((prepared_pairs / "train.jsonl").read_text().splitlines()[0])
    prompt, chosen, _ = tokenize_pair(tokenizer, row)
    ids = torch.tensor([prompt + chosen])
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(sft_folder / "model"),
                                      dpo_out / "adapter").eval()
    with torch.no_grad(), tuned.disable_adapter():
        reference = tuned(input_ids=ids).logits
    sft = AutoModelForCausalLM.from_pretrained(sft_folder / "model").eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    with torch.no_grad():
        assert torch.allclose(reference, sft(input_ids=ids).logits, atol=1e-5)
        assert not torch.allclose(reference, base(input_ids=ids).logits, atol=1e-3)


def test_sigkill_then_rerun_resumes_dpo_from_latest_complete_checkpoint(tmp_path, tiny_model_dir, prepared_pairs):
    out = outputs(tmp_path)
    command = [sys.executable, str(SCRIPT), *_dpo_argv(tmp_path, prepared_pairs, tiny_model_dir, max_steps=12,
                                                        save_steps=2, save_total_limit=2, logging_steps=1)]
    env = _env(tmp_path)
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoints = Path(out["checkpoints"])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None and len(_complete(checkpoints)) < 2:
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, (tmp_path / "first.log").read_text()[-3000:]
    latest = _complete(checkpoints)[-1]
    assert not (Path(out["mlflow_model"]) / "MLmodel").exists()

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads((Path(out["adapter"]) / "training_summary.json").read_text())
    assert summary["training_method"] == "dpo"
    assert summary["resumed_from_checkpoint"] == latest and summary["resumed_at_step"] == int(latest.split("-")[1])
    assert summary["steps"] == 12 and summary["steps_this_run"] == 12 - summary["resumed_at_step"]
    assert (Path(out["mlflow_model"]) / "MLmodel").is_file()


def test_full_fine_tune_dpo_scores_against_a_frozen_reference_copy(tmp_path, tiny_model_dir, prepared_pairs,
                                                                   mlflow_tracking, monkeypatch):
    summary, client, run_id = _dpo_run(tmp_path, prepared_pairs, tiny_model_dir, monkeypatch, peft_method="none",
                                       learning_rate=0.001, max_steps=4, logging_steps=2)
    assert summary["reference_model"] == "frozen copy of the base" and summary["steps"] == 4
    assert summary["merge_parity"]["applicable"] is False
    margins = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "rewards/margins"))
    assert margins[0] == (1, pytest.approx(0.0, abs=1e-6)) and margins[-1][1] != 0.0


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.skipif(__import__("importlib").util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
def test_dpo_with_qlora_trains_in_bf16(tmp_path, tiny_model_dir, prepared_pairs, mlflow_tracking, monkeypatch):
    summary, _, _ = _dpo_run(tmp_path, prepared_pairs, tiny_model_dir, monkeypatch, peft_method="qlora",
                             max_steps=3)
    assert summary["steps"] == 3 and summary["precision"] == "bf16" and summary["merge_parity"]["passed"]


def test_dpo_pairs_with_tool_calls_and_a_template_without_tools_stop_before_the_model_loads(
        tmp_path, tiny_model_dir, prepared_pairs, mlflow_tracking, monkeypatch):
    import shutil

    from trl.chat_template_utils import phi3_chat_template

    data = shutil.copytree(prepared_pairs, tmp_path / "pairs")
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    rows[1] = {**rows[1], "tools": tools}  # the second train pair calls tools
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    template = tmp_path / "phi3.jinja"
    template.write_text(phi3_chat_template, encoding="utf-8")

    def no_model_load(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_model_load)
    with pytest.raises(UserError) as info:
        load_entry("finetune").main(_dpo_argv(tmp_path, data, tiny_model_dir, chat_template=template))
    assert "train.jsonl line 2 has function calling" in str(info.value)

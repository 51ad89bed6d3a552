"""The resolved training plan (logged to MLflow and the summary), Liger's switch, and token-budget batching."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from maap_finetune.training import builders
from maap_finetune.training.batching import TokenBudgetBatchSampler, best_fit_decreasing
from maap_finetune.training.plan import PLAN_FILE
from tests.finetune.conftest import outputs
from tests.finetune.test_preflight_and_builders import CPU, GPU, make_config, plan_of, problems_of
from tests.helpers import argv_from_spec, load_entry

LIGER_GPU = replace(GPU, triton=True, liger_kernel=True)


def test_plan_resolves_every_auto_once(tmp_path):
    config = make_config(tmp_path, deepspeed_stage=2)
    plan = plan_of(config, LIGER_GPU)
    assert plan.as_dict() == {
        "device": "cuda", "precision": "bf16", "attn_implementation": "flash_attention_2", "use_liger_kernel": True,
        "batching": "padding_free", "max_tokens_per_batch": None, "deepspeed_stage": 2,
        "tokenized_on": None, "tokenize_seconds": None,  # filled in by the session once the data is tokenized
        "use_vllm": False,  # sft generates nothing
    }
    params = plan.as_params()
    assert params["plan.deepspeed_stage"] == 2 and params["plan.max_tokens_per_batch"] == "none"
    assert set(params) == {f"plan.{k}" for k in plan.as_dict()}  # the DeepSpeed dict itself is not a param
    # SFTConfig refuses bf16 without a GPU, so the GPU plan's switches are checked on a CPU plan.
    plain = make_config(tmp_path)
    args = builders.build_sft_config(plain, replace(plan_of(plain, CPU), use_liger_kernel=True))
    assert args.use_liger_kernel and args.use_cpu and not args.bf16


def test_liger_auto_follows_the_machine_and_true_needs_it(tmp_path):
    auto = make_config(tmp_path)
    assert auto.use_liger_kernel == "auto"  # the YAML default
    assert plan_of(auto, CPU).use_liger_kernel is False
    assert plan_of(auto, GPU).use_liger_kernel is False  # CUDA but no liger-kernel / triton installed
    assert plan_of(auto, LIGER_GPU).use_liger_kernel is True
    assert plan_of(make_config(tmp_path, use_liger_kernel="false"), LIGER_GPU).use_liger_kernel is False
    assert builders.build_sft_config(auto, plan_of(auto, CPU)).use_liger_kernel is False

    forced = make_config(tmp_path, use_liger_kernel="true")
    assert problems_of(forced, env=LIGER_GPU) == []
    (problem,) = problems_of(forced, env=CPU)
    assert "use_liger_kernel true needs a CUDA GPU, the triton package, the liger-kernel package" in problem
    assert "set use_liger_kernel auto" in problem
    (problem,) = problems_of(forced, env=GPU)
    assert "needs the triton package, the liger-kernel package" in problem


def test_max_tokens_per_batch_preflight(tmp_path):
    assert problems_of(make_config(tmp_path, max_tokens_per_batch=4096)) == []
    (short,) = problems_of(make_config(tmp_path, max_tokens_per_batch=1024))  # max_seq_length is 2048
    assert "below max_seq_length 2048" in short and "at least 2048" in short
    (packing,) = problems_of(make_config(tmp_path, max_tokens_per_batch=4096, batching="packing"))
    assert "does not apply to batching packing" in packing


@pytest.mark.parametrize("padded", [False, True])
def test_token_budget_batches_stay_within_budget_and_cover_each_example_once(padded):
    rng = random.Random(0)
    lengths = [min(512, int(rng.lognormvariate(4.5, 0.9)) + 1) for _ in range(300)]
    budget = 1024
    sampler = TokenBudgetBatchSampler(lengths, budget, padded=padded, seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        seen = sorted(i for b in batches for i in b)
        assert seen == list(range(len(lengths)))  # every example exactly once per epoch
        for b in batches:
            cost = max(lengths[i] for i in b) * len(b) if padded else sum(lengths[i] for i in b)
            assert cost <= budget
        epochs.append(batches)
    assert epochs[0] != epochs[1]  # the batch order is reshuffled each epoch
    sampler.sampler.set_epoch(0)  # how accelerate sets the epoch when it shards the batches over ranks
    assert list(sampler) == epochs[0]
    assert sorted(map(sorted, epochs[0])) == sorted(map(sorted, epochs[1]))
    if not padded:  # best-fit-decreasing fills batches: at most one more than the tokens strictly need
        assert len(sampler) <= -(-sum(lengths) // budget) + 1


def test_best_fit_decreasing_and_too_long_examples():
    # 6 opens a bin, 5 another; 4 fits best beside 6 (room 4), then 3 and 2 beside 5: two full bins.
    assert sorted(map(sorted, best_fit_decreasing([6, 5, 4, 3, 2], 10))) == [[0, 2], [1, 3, 4]]
    with pytest.raises(ValueError, match="1 examples are longer than max_tokens_per_batch 8"):
        TokenBudgetBatchSampler([4, 9], 8, padded=False, seed=0)


def test_token_budget_training_sees_every_token_once_and_logs_the_plan(
    tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking, monkeypatch
):
    from mlflow.tracking import MlflowClient

    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.session import load_tokenizer
    from maap_finetune.training.data import tokenize_rows
    from maap_finetune.models.source import resolve_model_source

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("plan")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    budget, accumulation = 600, 2
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared_chat, model_path=tiny_model_dir, max_seq_length=512,
        max_tokens_per_batch=budget, gradient_accumulation_steps=accumulation, **outputs(tmp_path),
    ))
    config = make_config(tmp_path, max_seq_length=512)
    tokenizer, _ = load_tokenizer(config, resolve_model_source(tiny_model_dir, None), "messages")
    examples, _ = tokenize_rows(tokenizer, load_prepared(prepared_chat).rows("train"), 512, False, "train")
    lengths = [e["length"] for e in examples]
    batches = len(best_fit_decreasing(lengths, budget))
    assert summary["tokens"] == sum(lengths)  # one epoch: every example once, nothing padded
    assert summary["steps"] == -(-batches // accumulation)
    assert summary["plan"]["max_tokens_per_batch"] == budget and summary["plan"]["device"] == "cpu"
    assert json.loads((tmp_path / "adapter" / PLAN_FILE).read_text()) == summary["plan"]
    run = client.get_run(run_id)
    assert run.data.params["plan.max_tokens_per_batch"] == str(budget)
    assert run.data.params["plan.use_liger_kernel"] == "False" and run.data.params["plan.precision"] == "fp32"
    assert PLAN_FILE in {a.path for a in client.list_artifacts(run_id)}

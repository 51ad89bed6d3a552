"""Fine-Tune end to end on the tiny Phi-3: real training, real merge, real MLflow (SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry


def _test_loss(model_dir: Path, prepared: Path) -> float:
    """Mean loss on the assistant tokens of the test split (the quality the gate compares)."""
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.training.data import target_token_loss

    return target_token_loss(str(model_dir), load_prepared(prepared).rows("test"), 2048, "test")


def test_lora_end_to_end(tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking, monkeypatch):
    import mlflow
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment = client.create_experiment("finetune-test")
    run_id = client.create_run(experiment).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)  # as Azure ML and the local runner set it

    finetune = load_entry("finetune")
    summary = finetune.main(
        argv_from_spec(
            "finetune", train_data=prepared_chat, model_path=tiny_model_dir, learning_rate=0.005, **outputs(tmp_path),
            eval_steps=5, early_stopping_patience=2,  # a sensible learning rate: validation keeps improving
        )
    )
    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_model.safetensors").stat().st_size > 0
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    adapted = {name.rsplit(".", 1)[-1] for name in adapter_config["target_modules"]}
    assert adapted == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}  # all-linear: every linear but lm_head
    assert (adapter / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    written = json.loads((adapter / "training_summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert summary["steps"] == 25 and summary["resumed_from_checkpoint"] is None
    assert summary["tokens"] > 5000 and summary["tokens_per_second"] > 0
    assert summary["batching"] == "padding_free" and summary["padding_ratio"] == 0.0  # the default: no padding
    assert summary["peak_rss_bytes"] > 0
    assert summary["eval_loss"] < 6.5  # the untrained tiny model sits near ln(vocab) = 6.65
    assert summary["stopped_early"] is False and summary["stop_reason"] is None and summary["evaluations"] == 5
    assert summary["model_checkpoint"] == "last step"  # load_best_model_at_end is off by default
    parity = summary["merge_parity"]
    assert parity["applicable"] and parity["passed"] and parity["max_relative_logit_diff"] < 1e-4

    # The merged MLflow model: loads as pyfunc and answers a chat request; its test loss beats the base.
    model_dir = tmp_path / "mlflow_model"
    assert (model_dir / "MLmodel").is_file() and (model_dir / "components" / "tokenizer").is_dir()
    assert "llm/v1/chat" in (model_dir / "MLmodel").read_text()
    tokenizer_config = model_dir / "components" / "tokenizer"
    assert (tokenizer_config / "chat_template.jinja").is_file() or "chat_template" in (
        tokenizer_config / "tokenizer_config.json"
    ).read_text()
    served = mlflow.pyfunc.load_model(str(model_dir))
    reply = served.predict({"messages": [{"role": "user", "content": "Do you repair bikes?"}], "max_tokens": 8})
    assert reply[0]["choices"][0]["message"]["role"] == "assistant"
    assert reply[0]["usage"]["completion_tokens"] >= 1
    base_loss, tuned_loss = _test_loss(tiny_model_dir, prepared_chat), _test_loss(model_dir, prepared_chat)
    assert tuned_loss < base_loss - 0.2, (base_loss, tuned_loss)

    # Everything went to the step's own run (resumed from MLFLOW_RUN_ID), not a new one.
    run = client.get_run(run_id)
    assert run.data.params["peft_method"] == "lora" and run.data.params["learning_rate"] == "0.005"
    for metric in ("train_loss", "learning_rate", "tokens_per_second", "final_eval_loss", "padding_ratio",
                   "train_examples_truncated"):
        assert metric in run.data.metrics, metric
    history = client.get_metric_history(run_id, "train_loss")
    assert len(history) >= 5
    evals = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss"))
    assert [step for step, _ in evals] == [5, 10, 15, 20, 25] and evals[-1][1] < evals[0][1]
    assert run.data.tags["maap.stopped_early"] == "false" and run.data.metrics["stopped_early"] == 0
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"adapter", "mlflow_model"} <= artifacts
    adapter_files = {a.path for a in client.list_artifacts(run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter_files
    assert "adapter/training_args.bin" not in adapter_files  # a pickle; its facts are the run's params
    assert len(mlflow.search_runs([experiment])) == 1


@pytest.mark.parametrize("method", ["dora", "none", "lora-pissa"])
def test_other_methods_train(method, tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking):
    finetune = load_entry("finetune")
    method, _, init = method.partition("-")
    summary = finetune.main(
        argv_from_spec(
            "finetune", train_data=prepared_chat, model_path=tiny_model_dir, peft_method=method, max_steps=3,
            learning_rate=0.005, init_lora_weights=init or "default", **outputs(tmp_path),
            # exercise the other switches on the way: checkpointing (full FT), loss on the prompt (DoRA)
            gradient_checkpointing=method == "none", train_on_prompt=method == "dora",
        )
    )
    assert summary["steps"] == 3
    assert (tmp_path / "mlflow_model" / "MLmodel").is_file()
    if init == "pissa":
        # PiSSA moves the base's principal directions into the adapter; the saved adapter is converted
        # so that it applies to the original base, which the parity check against the trained model proves.
        assert (tmp_path / "checkpoints" / "initial_adapter" / "adapter_config.json").is_file()
        assert summary["merge_parity"]["passed"]
        assert summary["merge_parity"]["max_relative_logit_diff_vs_trained"] < 1e-4
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["r"] == 32  # converted PiSSA -> LoRA doubles the rank (peft's conversion)
    elif method == "dora":
        config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
        assert config["use_dora"] is True
        assert summary["merge_parity"]["passed"]
        assert summary["trainable_parameters"] < summary["total_parameters"] / 2
        # train_on_prompt: every token of every training example is a target.
        from transformers import AutoTokenizer

        from maap_finetune.data.prepared import load_prepared
        from maap_finetune.training.data import tokenize_rows

        examples, _ = tokenize_rows(AutoTokenizer.from_pretrained(tiny_model_dir),
                                    load_prepared(prepared_chat).rows("train"), 2048, True, "train")
        assert summary["train_target_tokens"] == sum(len(e["input_ids"]) for e in examples)
    else:
        assert (tmp_path / "adapter" / "model.safetensors").is_file()
        assert not (tmp_path / "adapter" / "adapter_config.json").exists()
        assert summary["merge_parity"]["applicable"] is False
        assert summary["trainable_parameters"] == summary["total_parameters"]


def test_other_batching_modes_train(tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking):
    finetune = load_entry("finetune")
    for batching in ("group_by_length", "packing"):
        out = tmp_path / batching
        summary = finetune.main(
            argv_from_spec(
                "finetune", train_data=prepared_chat, model_path=tiny_model_dir, batching=batching, max_steps=1,
                max_seq_length=512, **outputs(out)
            )
        )
        assert summary["steps"] == 1 and summary["batching"] == batching
        if batching == "packing":
            assert summary["padding_ratio"] < 0.05  # best-fit rows, flattened: (almost) no padding
        else:
            assert 0.0 < summary["padding_ratio"] < 0.3  # similar lengths share a batch


def test_registry_mlflow_base_without_chat_template(tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking):
    """An Azure ML registry MLflow folder (weights under data/model) works as the base model; a base
    without a chat template gets the default one, which is saved with the fine-tuned model."""
    import shutil

    from maap_finetune.training.data import DEFAULT_CHAT_TEMPLATE

    registry_model = tmp_path / "registry_model"
    shutil.copytree(tiny_model_dir, registry_model / "data" / "model")
    (registry_model / "data" / "model" / "chat_template.jinja").unlink()
    (registry_model / "MLmodel").write_text("flavors: {}\n")
    finetune = load_entry("finetune")
    summary = finetune.main(
        argv_from_spec(
            "finetune", train_data=prepared_chat, model_path=registry_model, max_steps=1, **outputs(tmp_path / "o")
        )
    )
    assert summary["steps"] == 1 and summary["default_chat_template_added"] is True
    saved = tmp_path / "o" / "mlflow_model" / "components" / "tokenizer" / "chat_template.jinja"
    assert saved.read_text() == DEFAULT_CHAT_TEMPLATE

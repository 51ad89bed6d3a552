"""Evaluate's entry script on the tiny model: metrics, report, gate decision, MLflow logging, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.common.errors import UserError
from tests.evaluate.fixtures import write_prepared
from tests.helpers import argv_from_spec, load_entry


def run_evaluate(tmp_path, prepared, mlflow_model, base_dir, **values):
    out = tmp_path / "evaluation"
    argv = argv_from_spec(
        "evaluate", test_data=prepared, mlflow_model=mlflow_model, model_path=base_dir, evaluation=out, **values
    )
    load_entry("evaluate").main(argv)
    return out


def test_chat_metrics_report_decision_and_mlflow(tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model,
                                                 tiny_model_dir):
    import mlflow

    out = run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "chat" and metrics["rows_evaluated"] == 12
    assert set(metrics["base"]) == set(metrics["finetuned"]) == {"loss", "perplexity"}
    # The trained model fits the held-out chats far better than the random base.
    assert metrics["finetuned"]["loss"] < metrics["base"]["loss"] - 1.0
    assert metrics["deltas"]["loss"] == pytest.approx(metrics["finetuned"]["loss"] - metrics["base"]["loss"])
    assert metrics["loss_details"]["base"]["scored_tokens"] == metrics["loss_details"]["finetuned"]["scored_tokens"] > 0
    assert metrics["lineage"]["peft_method"] == "none" and len(metrics["lineage"]["dataset_sha256"]) == 64

    decision = json.loads((out / "decision.json").read_text())
    assert decision["passed"] is True and decision["metric"] == "loss"
    assert decision["values"]["improvement"] == pytest.approx(-metrics["deltas"]["loss"])

    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 8  # sample_generations rows for a chat task
    assert all(g["reference"] and g["prompt"] for g in generations)
    report = (out / "report.md").read_text()
    assert "| loss |" in report and "quality gate passed" in report
    assert report.count("\n| ") >= 2 + 1 + 8  # metric rows, header, one row per generation
    assert "<table>" in (out / "report.html").read_text()
    for chart in ("metrics.png", "per_example_loss.png"):
        assert (out / "charts" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    run = mlflow.search_runs(search_all_experiments=True, output_format="list")[0]
    assert run.data.metrics["finetuned_loss"] == pytest.approx(metrics["finetuned"]["loss"])
    assert run.data.metrics["quality_gate_passed"] == 1.0
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/metrics.json", "evaluation/decision.json", "evaluation/report.md"} <= artifacts


def test_gate_fails_when_the_model_did_not_improve(tmp_path, mlflow_tracking, prepared_chat, untrained_mlflow_model,
                                                  tiny_model_dir):
    out = run_evaluate(tmp_path, prepared_chat, untrained_mlflow_model, tiny_model_dir, max_new_tokens=8)
    decision = json.loads((out / "decision.json").read_text())
    assert decision["passed"] is False
    assert decision["values"]["improvement"] == pytest.approx(0.0, abs=1e-6)
    assert decision["reason"].startswith("quality gate failed: loss")


def test_threshold_gate(tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model, tiny_model_dir):
    out = run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir,
                       gate_metric="perplexity", gate_threshold=1.01, gate_min_improvement=None,
                       sample_generations=0, max_new_tokens=4)
    decision = json.loads((out / "decision.json").read_text())
    assert decision["passed"] is False and "above the threshold 1.01" in decision["reason"]
    assert decision["rule"] == {"threshold": 1.01, "min_improvement": None}


def test_qa_task_gets_exact_match_and_f1(tmp_path, mlflow_tracking, finetuned_mlflow_model, tiny_model_dir):
    rows = [
        {"messages": [{"role": "user", "content": f"Question: How many gears does bike {i} have?"},
                      {"role": "assistant", "content": "The Pebble Kids has a single-speed drivetrain."}]}
        for i in range(6)
    ]
    prepared = write_prepared(tmp_path / "prepared", rows=rows, task="qa", test_rows=4,
                              templates={"completion": "{answer}"})
    out = run_evaluate(tmp_path, prepared, finetuned_mlflow_model, tiny_model_dir,
                       gate_metric="token_f1", max_new_tokens=16)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["finetuned"]) == {"loss", "perplexity", "exact_match", "token_f1"}
    assert 0.0 <= metrics["base"]["token_f1"] <= 1.0
    # The trained model answers about the Pebble Kids' drivetrain; the random base does not.
    assert metrics["finetuned"]["token_f1"] > metrics["base"]["token_f1"]
    assert metrics["rows_generated"] == 4  # every evaluated row is generated for a metric task
    assert json.loads((out / "decision.json").read_text())["metric"] == "token_f1"


def test_text_task(tmp_path, mlflow_tracking, finetuned_mlflow_model, tiny_model_dir, sample_data):
    rows = [{"text": json.loads(line)["messages"][-1]["content"]} for line in sample_data.read_text().splitlines()[:10]]
    prepared = write_prepared(tmp_path / "prepared", rows=rows, task="text", test_rows=3)
    out = run_evaluate(tmp_path, prepared, finetuned_mlflow_model, tiny_model_dir, max_new_tokens=8)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["base"]) == {"loss", "perplexity"} and metrics["rows_generated"] == 3
    assert metrics["finetuned"]["loss"] < metrics["base"]["loss"]


def test_gate_metric_must_be_measured_for_the_task(tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model,
                                                   tiny_model_dir):
    with pytest.raises(UserError, match="gate_metric 'bleu' is not measured for task 'chat'"):
        run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir, gate_metric="bleu")
    assert not (tmp_path / "evaluation").exists()  # refused before any model was loaded


def test_gate_needs_a_rule(tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model, tiny_model_dir):
    with pytest.raises(UserError, match="has no rule"):
        run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir, gate_min_improvement=None)


def test_empty_test_split_is_a_user_error(tmp_path, mlflow_tracking, finetuned_mlflow_model, tiny_model_dir,
                                          prepared_chat):
    rows = [json.loads(line) for line in (prepared_chat / "train.jsonl").read_text().splitlines()]
    prepared = write_prepared(tmp_path / "prepared", rows=rows, test_rows=0)
    with pytest.raises(UserError, match="the test split is empty"):
        run_evaluate(tmp_path, prepared, finetuned_mlflow_model, tiny_model_dir)


def test_bad_row_names_file_and_line(tmp_path, mlflow_tracking, finetuned_mlflow_model, tiny_model_dir):
    rows = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "no answer"}, {"role": "user", "content": "still none"}]}]
    prepared = write_prepared(tmp_path / "prepared", rows=rows, test_rows=2)
    with pytest.raises(UserError, match=r"test\.jsonl, line 2: the last message must be the assistant turn"):
        run_evaluate(tmp_path, prepared, finetuned_mlflow_model, tiny_model_dir)


def test_parse_args_collects_every_problem(tmp_path):
    argv = argv_from_spec("evaluate", test_data=tmp_path / "missing", mlflow_model=tmp_path, evaluation=tmp_path / "o",
                          max_new_tokens=4096, max_seq_length=64)
    with pytest.raises(UserError) as err:
        load_entry("evaluate").parse_args(argv)
    message = str(err.value)
    assert "3 problems" in message or "4 problems" in message
    for fragment in ("--test_data", "MLmodel is missing", "exactly one base model", "no room for the prompt"):
        assert fragment in message


def test_unknown_flag_is_rejected(tmp_path):
    argv = argv_from_spec("evaluate", test_data=tmp_path, mlflow_model=tmp_path, evaluation=tmp_path / "o")
    with pytest.raises(SystemExit):
        load_entry("evaluate").parse_args(argv + ["--max_new_token", "3"])

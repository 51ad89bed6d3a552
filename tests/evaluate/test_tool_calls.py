"""Tool-call metrics: calls read back from generated text in the usual syntaxes, and Evaluate reporting
them for test rows whose reference is a tool call."""

from __future__ import annotations

import json
from pathlib import Path

from maap_finetune.evaluation.tool_calls import parse_tool_calls, tool_call_metrics
from tests.evaluate.fixtures import write_prepared
from tests.evaluate.test_evaluate import run_evaluate

SAMPLE_TOOLS = Path(__file__).resolve().parents[2] / "data" / "sample" / "tools.jsonl"
REFERENCE = [("check_stock", {"model": "City Glide", "store": "Boise"})]


def test_calls_are_read_back_from_each_syntax():
    phi4 = '<|tool_call|>[{"name": "check_stock", "arguments": {"store": "Boise", "model": "City Glide"}}]<|/tool_call|>'
    hermes = '<tool_call>\n{"name": "check_stock", "arguments": "{\\"model\\": \\"City Glide\\", \\"store\\": \\"Boise\\"}"}\n</tool_call>'
    llama = 'Sure. {"name": "check_stock", "parameters": {"model": "City Glide", "store": "Boise"}}'
    openai = '[{"id": "c", "type": "function", "function": {"name": "check_stock", "arguments": "{\\"model\\": \\"City Glide\\", \\"store\\": \\"Boise\\"}"}}]'
    for text in (phi4, hermes, llama, openai):
        assert parse_tool_calls(text) == REFERENCE, text
    assert parse_tool_calls("No call here {not json} [1, 2]") == []


def test_name_accuracy_and_argument_exact_match():
    outputs = [
        '[{"name": "check_stock", "arguments": {"model": "City Glide", "store": "Boise"}}]',  # exact
        '[{"name": "check_stock", "arguments": {"model": "City Glide", "store": "Seattle"}}]',  # right name only
        "It is in stock.",  # no call
        '[{"name": "order_status", "arguments": {"order_id": "A1"}}]',  # wrong function
    ]
    assert tool_call_metrics(outputs, [REFERENCE] * 4) == {"tool_name_accuracy": 0.5,
                                                           "tool_arguments_exact_match": 0.25}
    assert tool_call_metrics([], []) == {}


def test_evaluate_reports_tool_metrics_beside_the_loss(tmp_path, mlflow_tracking, finetuned_mlflow_model,
                                                      tiny_model_dir):
    rows = [json.loads(line) for line in SAMPLE_TOOLS.read_text(encoding="utf-8").splitlines()]
    calls_last = [r for r in rows if r["messages"][-1].get("tool_calls")]
    prepared = write_prepared(tmp_path / "prepared", calls_last + rows, test_rows=len(calls_last) + 2)
    out = run_evaluate(tmp_path, prepared, finetuned_mlflow_model, tiny_model_dir, sample_generations=1,
                       max_new_tokens=8)
    metrics = json.loads((out / "metrics.json").read_text())
    for side in ("base", "finetuned"):
        assert {"loss", "tool_name_accuracy", "tool_arguments_exact_match"} <= set(metrics[side])
        assert 0.0 <= metrics[side]["tool_name_accuracy"] <= 1.0
    assert metrics["higher_is_better"]["tool_name_accuracy"] is True
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == len(calls_last) + 1  # every tool-call reference is generated, plus the sample
    assert json.loads(generations[0]["reference"])[0]["name"] == "check_stock"

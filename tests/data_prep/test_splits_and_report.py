"""Seeded splits, explicit validation/test inputs, overlap, the data report, MLflow logging and config errors."""

from __future__ import annotations

import json

import pytest

from maap_finetune.common.errors import UserError
from maap_finetune.data.prepared import load_prepared
from tests.data_prep.conftest import chat_row, write_jsonl


def _keys(rows):
    return sorted(json.dumps(r, sort_keys=True) for r in rows)


def test_default_run_on_the_sample_meets_the_contract(prep, sample_data):
    report = prep(sample_data)
    data = load_prepared(prep.prepared)
    assert data.task == "chat" and data.format == "messages"
    total = sum(data.split_rows.values())
    assert total == report["rows"]["read"] - report["rows"]["duplicates_removed"]
    assert data.split_rows["validation"] == data.split_rows["test"] == round(total * 0.1)
    for split in ("train", "validation", "test"):
        rows = list(data.rows(split))
        assert len(rows) == data.split_rows[split]
        for row in rows:
            assert row["messages"][-1]["role"] == "assistant"
            assert {m["role"] for m in row["messages"]} <= {"system", "user", "assistant"}
    for name in ("data_report.json", "data_report.md", "length_histogram.png"):
        assert (prep.report_dir / name).stat().st_size > 0
    assert (prep.report_dir / "length_histogram.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((prep.report_dir / "data_report.json").read_text())
    assert on_disk["rows"] == report["rows"]
    assert "| train | %d |" % data.split_rows["train"] in (prep.report_dir / "data_report.md").read_text()


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_splits_are_seeded_exact_and_disjoint(prep, tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [chat_row(i) for i in range(200)])
    prep(path, validation_ratio=0.15, test_ratio=0.05, seed=7)
    first = {s: _keys(prep.rows(s)) for s in ("train", "validation", "test")}
    assert [len(first[s]) for s in ("train", "validation", "test")] == [160, 30, 10]
    assert not set(first["train"]) & (set(first["validation"]) | set(first["test"]))
    prep(path, validation_ratio=0.15, test_ratio=0.05, seed=7)
    assert {s: _keys(prep.rows(s)) for s in first} == first
    prep(path, validation_ratio=0.15, test_ratio=0.05, seed=8)
    assert _keys(prep.rows("validation")) != first["validation"]


def test_explicit_validation_and_test_inputs(prep, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(i) for i in range(20)])
    validation = write_jsonl(tmp_path / "val.jsonl", [chat_row(100), chat_row(101), chat_row(3)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row(200)])
    report = prep(train, validation_data=validation, test_data=test, validation_ratio=0.5, test_ratio=0.5)
    assert report["rows"]["written"] == {"train": 19, "validation": 3, "test": 1}
    # chat_row(3) is in validation, so its copy in train is removed to keep the evaluation clean.
    assert report["duplicates"]["train_rows_also_in_validation_or_test"] == 1
    assert json.dumps(chat_row(3), sort_keys=True) not in _keys(prep.rows("train"))
    source = prep.metadata()["source"]
    assert source["validation_ratio"] is None and source["test_ratio"] is None
    assert set(source["inputs"]) == {"train_data", "validation_data", "test_data"}


def test_explicit_test_only_cuts_validation_from_train(prep, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(i) for i in range(20)])
    test = write_jsonl(tmp_path / "test.jsonl", [chat_row(200), chat_row(201)])
    report = prep(train, test_data=test, validation_ratio=0.25)
    assert report["rows"]["written"] == {"train": 15, "validation": 5, "test": 2}


def test_prompt_overlap_between_train_and_evaluation_is_reported(prep, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row(i) for i in range(10)])
    same_question = {"messages": [{"role": "user", "content": "Question 4?"},
                                  {"role": "assistant", "content": "A different answer."}]}
    test = write_jsonl(tmp_path / "test.jsonl", [same_question, chat_row(50)])
    report = prep(train, test_data=test, validation_ratio=0.0)
    assert report["prompt_overlap_with_train"] == {"validation": 0, "test": 1}
    assert "test 1" in (prep.report_dir / "data_report.md").read_text()


def test_token_statistics_with_the_base_model_tokenizer(prep, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    rows = [chat_row(i) for i in range(30)]
    long_row = {"messages": [{"role": "user", "content": "word " * 400}, {"role": "assistant", "content": "ok"}]}
    path = write_jsonl(tmp_path / "c.jsonl", [*rows, long_row])
    report = prep(path, model_path=tiny_model_dir, max_seq_length=64, validation_ratio=0.0, test_ratio=0.0)
    lengths = report["lengths"]
    assert lengths["unit"] == "tokens" and lengths["tokenizer"] == str(tiny_model_dir)
    tokens = lengths["per_split"]["train"]["tokens"]
    assert tokens["count"] == 31 and tokens["over_max_seq_length"] == 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = [len(tokenizer(tokenizer.apply_chat_template(r["messages"], tokenize=False),
                              add_special_tokens=False)["input_ids"]) for r in [*rows, long_row]]
    assert expected[-1] > 64 > max(expected[:-1])
    assert tokens["max"] == max(expected) and tokens["total"] == sum(expected)
    assert report["estimated_training_tokens_per_epoch"]["tokens"] == sum(expected)
    for key in ("p50", "p90", "p95", "p99", "mean"):
        assert tokens["min"] <= tokens[key] <= tokens["max"]


def test_metrics_and_report_are_logged_to_mlflow(prep, tmp_path):
    import mlflow

    path = write_jsonl(tmp_path / "c.jsonl", [json.dumps(chat_row(i)) for i in range(20)] + ["{bad"], raw=True)
    with mlflow.start_run() as run:
        prep(path, on_invalid="skip")
    client = mlflow.tracking.MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.metrics["rows_read"] == 21 and data.metrics["rejected_invalid_json"] == 1
    assert data.metrics["rows_train"] == 16 and data.params["task"] == "chat"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "data_report")}
    assert {"data_report/data_report.json", "data_report/data_report.md", "data_report/length_histogram.png",
            "data_report/metadata.json"} <= artifacts


@pytest.mark.parametrize("values,message", [
    ({"train_data": None}, "give exactly one of train_data (a file) or train_folder"),
    ({"task": "translation"}, "task translation needs source_lang"),
    ({"text_key": "body"}, "text_key is not used by task chat (it is for task classification, text)"),
    ({"task": "classification", "prompt_template": "Label {txt}"}, "uses {txt}; it may use {text}, {labels}"),
    ({"task": "classification", "completion_template": "{label"}, "unbalanced braces"),
    ({"prompt_template": "x"}, "do not apply to task chat"),
    ({"label_names": "a,a"}, "label_names repeats a"),
    ({"validation_ratio": 0.5, "test_ratio": 0.5}, "leaves nothing to train on"),
    ({"source_lang": "en"}, "source_lang is for task translation"),
])
def test_config_errors_are_collected(prep, sample_data, values, message):
    with pytest.raises(UserError) as info:
        prep(sample_data if "train_data" not in values else None, **values)
    assert message in str(info.value)


def test_several_config_errors_in_one_message(prep, sample_data):
    with pytest.raises(UserError) as info:
        prep(sample_data, task="translation", text_key="x", label_names="a,b")
    message = str(info.value)
    assert "3 problems" in message or "4 problems" in message
    assert "source_lang" in message and "text_key" in message and "label_names" in message


def test_unknown_flag_is_rejected(prep, sample_data, tmp_path):
    from tests.helpers import argv_from_spec, load_entry

    argv = argv_from_spec("data_prep", train_data=sample_data, prepared_data=tmp_path / "p", data_report=tmp_path / "r")
    with pytest.raises(SystemExit):
        load_entry("data_prep").parse_args([*argv, "--tasks", "chat"])

"""Task rft: Azure OpenAI RFT rows keep their prompt and reference fields, checked against the graders'
templates at file:line:field."""

from __future__ import annotations

import json

import pytest

from maap_finetune.common.errors import UserError
from tests.data_prep.conftest import write_jsonl

GRADERS = {"type": "multi", "name": "reward", "calculate_output": "0.5 * exact + 0.5 * tagged", "graders": {
    "exact": {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
              "reference": "{{item.answer.text}}", "operation": "eq"},
    "tagged": {"type": "string_check", "name": "tagged", "input": "{{sample.output_text}}",
               "reference": "{{item.tag}}", "operation": "like"},
}}


def rft_row(i: int, **extra) -> dict:
    return {"messages": [{"role": "developer", "content": "Answer in tags."},
                         {"role": "user", "content": f"What is {i} + {i}?"}],
            "answer": {"text": str(2 * i)}, "tag": "<a>", "source": f"set-{i % 2}", **extra}


@pytest.fixture
def graders_file(tmp_path):
    path = tmp_path / "graders.json"
    path.write_text(json.dumps(GRADERS), encoding="utf-8")
    return path


def test_rows_keep_messages_and_every_field(prep, tmp_path, graders_file, all_rows_train):
    path = write_jsonl(tmp_path / "rft.jsonl", [rft_row(i) for i in range(4)])
    prep(path, task="rft", graders=graders_file, **all_rows_train)
    rows = sorted(prep.rows(), key=lambda r: r["messages"][1]["content"])
    assert rows[0] == {"messages": [{"role": "system", "content": "Answer in tags."},
                                    {"role": "user", "content": "What is 0 + 0?"}],
                       "answer": {"text": "0"}, "tag": "<a>", "source": "set-0"}
    meta = prep.metadata()
    assert meta["task"] == "rft" and meta["format"] == "rft"
    assert meta["graders"] == {"file": "graders.json", "name": "reward", "item_fields": ["answer", "tag"]}


def test_row_missing_a_graded_field_names_file_line_field_and_grader(prep, tmp_path, graders_file):
    rows = [rft_row(i) for i in range(5)]
    rows[2]["answer"] = {"value": "4"}
    path = write_jsonl(tmp_path / "rft.jsonl", rows)
    with pytest.raises(UserError) as err:
        prep(path, task="rft", graders=graders_file)
    message = str(err.value)
    assert "missing_field: 1" in message
    assert f"rft.jsonl line 3: field 'answer.text': missing, read by grader 'exact' ({graders_file})" in message


def test_skip_drops_rows_missing_a_graded_field(prep, tmp_path, graders_file, all_rows_train):
    rows = [rft_row(i) for i in range(5)]
    del rows[4]["tag"]
    path = write_jsonl(tmp_path / "rft.jsonl", rows)
    report = prep(path, task="rft", graders=graders_file, on_invalid="skip", **all_rows_train)
    assert len(prep.rows()) == 4 and report["rejected_by_reason"] == {"missing_field": 1}


def test_prompt_must_end_with_a_user_turn(prep, tmp_path):
    rows = [rft_row(i) for i in range(3)]
    rows[1]["messages"].append({"role": "assistant", "content": "2"})
    path = write_jsonl(tmp_path / "rft.jsonl", rows)
    with pytest.raises(UserError, match=r"rft.jsonl line 2: field 'messages\[2\]': the last message is from the "
                                        r"assistant; an rft prompt ends with the user turn"):
        prep(path, task="rft")


def test_graders_refused_for_other_tasks_and_bad_graders_refused(prep, tmp_path, graders_file, sample_data):
    with pytest.raises(UserError, match=r"graders is for task rft"):
        prep(sample_data, task="chat", graders=graders_file)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**GRADERS, "calculate_output": "exact + nothing"}), encoding="utf-8")
    path = write_jsonl(tmp_path / "rft.jsonl", [rft_row(i) for i in range(3)])
    with pytest.raises(UserError, match=r"bad.json grader 'reward': calculate_output .* names 'nothing'"):
        prep(path, task="rft", graders=bad)

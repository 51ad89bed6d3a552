"""Each kind of invalid input is reported with file, line, field and reason; fail stops, skip drops and counts."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from maap_finetune.common.errors import UserError
from tests.data_prep.conftest import chat_row, write_jsonl
from tests.helpers import COMPONENTS_DIR, REPO_ROOT, argv_from_spec

GOOD = [json.dumps(chat_row(i)) for i in range(4)]


def _msgs(*pairs, **extra):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs], **extra})


# (case id, task, extra inputs, bad line, kind, field, reason fragment)
CASES = [
    ("invalid_json", "chat", {}, '{"messages": [', "invalid_json", None, "invalid JSON"),
    ("not_an_object", "chat", {}, "[1, 2]", "wrong_type", None, "expected a JSON object per row, got array"),
    ("messages_not_list", "chat", {}, '{"messages": "hi"}', "wrong_type", "messages", "expected a list of messages"),
    ("unknown_role", "chat", {}, _msgs(("user", "Hi"), ("bot", "Yo")), "unknown_role", "messages[1].role",
     "unknown role 'bot'"),
    ("null_content", "chat", {}, json.dumps({"messages": [{"role": "user", "content": None},
                                                           {"role": "assistant", "content": "x"}]}),
     "missing_content", "messages[0].content", "content is null"),
    ("empty_content", "chat", {}, _msgs(("user", "Hi"), ("assistant", "   ")), "missing_content",
     "messages[1].content", "message is empty"),
    ("missing_content_key", "chat", {}, json.dumps({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}),
     "missing_content", "messages[0].content", "has no content"),
    ("content_wrong_type", "chat", {}, json.dumps({"messages": [{"role": "user", "content": 5},
                                                                 {"role": "assistant", "content": "x"}]}),
     "wrong_type", "messages[0].content", "expected a string or text parts, got integer"),
    ("no_assistant", "chat", {}, _msgs(("user", "Hi")), "no_assistant_message", "messages", "no assistant message"),
    ("no_user", "chat", {}, _msgs(("system", "Be."), ("assistant", "Hi")), "no_user_message", "messages",
     "no user message"),
    ("last_not_assistant", "chat", {}, _msgs(("user", "Hi"), ("assistant", "Yo"), ("user", "And?")),
     "last_not_assistant", "messages[2]", "last message is from the user"),
    ("misplaced_system", "chat", {}, _msgs(("user", "Hi"), ("system", "Be."), ("assistant", "Yo")),
     "misplaced_system", "messages[1].role", "only the first message may be system"),
    ("tool_calls_empty", "chat", {}, json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "x", "tool_calls": []}]}),
     "wrong_type", "messages[1].tool_calls", "expected a non-empty list of tool calls"),
    ("tool_definition", "chat", {}, _msgs(("user", "Hi"), ("assistant", "Yo"), tools=[{"type": "function"}]),
     "invalid_tool", "tools[0].function", "expected an object, got null"),
    ("legacy_functions", "chat", {}, _msgs(("user", "Hi"), ("assistant", "Yo"), functions=[{"name": "f"}]),
     "unsupported_field", "functions", "give the definitions as tools"),
    ("weight_value", "chat", {}, json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                           {"role": "assistant", "content": "Yo", "weight": 0.5}]}),
     "invalid_weight", "messages[1].weight", "weight must be 0 or 1, got 0.5"),
    ("weight_on_user", "chat", {}, json.dumps({"messages": [{"role": "user", "content": "Hi", "weight": 1},
                                                             {"role": "assistant", "content": "Yo"}]}),
     "invalid_weight", "messages[0].weight", "assistant messages only"),
    ("all_weights_zero", "chat", {}, json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                               {"role": "assistant", "content": "Yo", "weight": 0}]}),
     "no_learnable_turn", "messages", "every assistant message has weight 0"),
    ("tool_not_in_tools", "chat", {}, json.dumps({
        "messages": [{"role": "user", "content": "Weather?"},
                     {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                         "name": "get_time", "arguments": "{}"}}]}],
        "tools": [{"type": "function", "function": {"name": "get_weather"}}]}),
     "unknown_tool", "messages[1].tool_calls[0].function.name", "'get_time' is not in the row's tools (get_weather)"),
    ("arguments_object", "chat", {}, json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": {"city": "Oslo"}}}]}]}),
     "invalid_arguments", "messages[1].tool_calls[0].function.arguments", "must be a JSON string"),
    ("arguments_bad_json", "chat", {}, json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{city: Oslo}"}}]}]}),
     "invalid_arguments", "messages[1].tool_calls[0].function.arguments", "not valid JSON"),
    ("tool_call_id", "chat", {}, json.dumps({"messages": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c2", "content": "12 C"},
        {"role": "assistant", "content": "12 degrees."}]}),
     "unknown_tool_call_id", "messages[2].tool_call_id", "'c2' answers no earlier tool call of this conversation (earlier call ids: c1)"),
    ("image_part", "chat", {}, json.dumps({"messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
        {"role": "assistant", "content": "x"}]}),
     "unsupported_field", "messages[0].content[0]", "'image_url' is not supported"),
    ("missing_column", "chat", {}, json.dumps({"text": "hello", "id": 3}), "missing_column", None,
     "missing column(s) 'messages' (columns found: 'text', 'id')"),
    ("mixed_schema", "chat", {}, json.dumps({"conversations": [{"from": "human", "value": "Hi"},
                                                                 {"from": "gpt", "value": "Yo"}]}),
     "mixed_schema", None, "sharegpt layout"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_fail_reports_file_line_field_and_reason(prep, tmp_path, case):
    _, task, extra, bad, kind, field, reason = case
    path = write_jsonl(tmp_path / "bad.jsonl", [*GOOD[:2], bad, *GOOD[2:]], raw=True)
    with pytest.raises(UserError) as info:
        prep(path, task=task, **extra)
    message = str(info.value)
    assert f"{kind}: 1 (" in message
    expected = f"{path} line 3:" + (f" field {field!r}:" if field else "")
    assert expected in message, message
    assert reason in message, message
    assert (prep.report_dir / "problems.json").is_file()  # kept as an artifact on failure too
    assert not (tmp_path / "run1" / "prepared" / "metadata.json").exists()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_skip_drops_the_row_and_counts_it(prep, tmp_path, case):
    _, task, extra, bad, kind, field, _ = case
    path = write_jsonl(tmp_path / "bad.jsonl", [*GOOD[:2], bad, *GOOD[2:]], raw=True)
    report = prep(path, task=task, on_invalid="skip", validation_ratio=0.0, test_ratio=0.0, **extra)
    assert report["rejected_by_reason"] == {kind: 1}
    assert report["rows"] == {"read": 5, "valid": 4, "rejected": 1, "duplicates_removed": 0,
                              "written": {"train": 4, "validation": 0, "test": 0}}
    example = report["problems"]["examples"][kind][0]
    assert (example["line"], example["field"]) == (3, field)
    assert len(prep.rows()) == 4


TASK_CASES = [
    ("classification", {"label_names": "a,b"}, {"text": "x", "label": "c"}, "unknown_label", "label",
     "label 'c' is neither one of label_names"),
    ("classification", {}, {"text": "x", "label": [1]}, "wrong_type", "label", "expected a string or integer label"),
    ("classification", {}, {"text": "", "label": "a"}, "missing_content", "text", "the value is empty"),
    ("ner", {}, {"tokens": ["a", "b"], "ner_tags": ["O"]}, "length_mismatch", "ner_tags", "2 tokens but 1 tags"),
    ("ner", {}, {"tokens": ["a"], "ner_tags": ["X-PER"]}, "invalid_tag", "ner_tags[0]", "is not O, B-<type> or I-<type>"),
    ("ner", {"label_names": "O,B-PER"}, {"tokens": ["a"], "ner_tags": [7]}, "unknown_label", "ner_tags[0]",
     "id in 0..1"),
    ("ner", {}, {"tokens": [], "ner_tags": []}, "missing_content", "tokens", "token list is empty"),
    ("qa", {}, {"context": "Frames last long.", "question": "What?", "answers": {"text": ["last"], "answer_start": [0]}},
     "answer_span_mismatch", "answers.answer_start[0]", "(the context there reads 'Fram')"),
    ("qa", {}, {"context": "C", "question": "Q?", "answers": {"text": [], "answer_start": []}}, "missing_content",
     "answers.text", "unanswerable"),
    ("translation", {"source_lang": "en", "target_lang": "de"}, {"translation": {"en": "Hi", "fr": "Salut"}},
     "missing_column", "translation.de", "languages found: en, fr"),
    ("summarization", {}, {"document": "Doc", "summary": None}, "missing_content", "summary", "the value is null"),
    ("instruction", {}, {"instruction": "Do", "input": 3, "output": "Done"}, "wrong_type", "input",
     "expected a string, got integer"),
    ("text", {}, {"text": 12}, "wrong_type", "text", "expected a string, got integer"),
]

GOOD_BY_TASK = {
    "classification": [{"text": f"t{i}", "label": "a"} for i in range(3)],
    "ner": [{"tokens": [f"w{i}"], "ner_tags": ["O"]} for i in range(3)],
    "qa": [{"context": f"Context {i}.", "question": "Q?", "answers": {"text": ["Context"], "answer_start": [0]}}
           for i in range(3)],
    "translation": [{"translation": {"en": f"Hi {i}", "de": f"Hallo {i}"}} for i in range(3)],
    "summarization": [{"document": f"Doc {i}", "summary": "S"} for i in range(3)],
    "instruction": [{"instruction": f"Do {i}", "input": "", "output": "Done"} for i in range(3)],
    "text": [{"text": f"Text {i}"} for i in range(3)],
}


@pytest.mark.parametrize("case", TASK_CASES, ids=[f"{c[0]}-{c[3]}" for c in TASK_CASES])
def test_task_specific_problems(prep, tmp_path, case):
    task, extra, bad, kind, field, reason = case
    good = GOOD_BY_TASK[task]
    path = write_jsonl(tmp_path / "bad.jsonl", [good[0], bad, *good[1:]])
    with pytest.raises(UserError) as info:
        prep(path, task=task, **extra)
    message = str(info.value)
    assert f"{path} line 2: field {field!r}:" in message, message
    assert f"{kind}: 1" in message and reason in message, message
    report = prep(path, task=task, on_invalid="skip", validation_ratio=0.0, test_ratio=0.0, **extra)
    assert report["rejected_by_reason"] == {kind: 1}


def test_not_utf8_in_jsonl_and_csv(prep, tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b"\n".join([GOOD[0].encode(), '{"messages": "caf\xe9"}'.encode("latin-1"), GOOD[1].encode()]))
    with pytest.raises(UserError, match=r"line 2: invalid UTF-8 byte 0xe9 at column \d+"):
        prep(path)
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"text,label\nok,a\ncaf\xe9,b\nfine,a\n")
    report = prep(csv_path, task="classification", on_invalid="skip", validation_ratio=0.0, test_ratio=0.0)
    assert report["rejected_by_reason"] == {"not_utf8": 1}
    assert report["problems"]["examples"]["not_utf8"][0] | {"file": None} == {
        "file": None, "line": 3, "field": "text", "kind": "not_utf8", "reason": "the value has invalid UTF-8 bytes"}


def test_csv_row_with_wrong_field_count(prep, tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("text,label\nok,a\nthree,fields,here\nfine,b\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad.csv line 3: the row has 3 fields, the header has 2"):
        prep(path, task="classification")


def test_missing_columns_list_the_columns_found(prep, tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("body,category\nhello,a\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"missing column\(s\) \{text\|sentence, label\} \(columns found: 'body', 'category'\)"):
        prep(path, task="classification")
    report = prep(path, task="classification", text_key="body", label_key="category", validation_ratio=0.0,
                  test_ratio=0.0)
    assert report["columns"] == {"text": "body", "label": "category"}


def test_mixed_alpaca_and_prompt_completion(prep, tmp_path):
    rows = [{"instruction": "Do", "input": "", "output": "Done"}, {"prompt": "Say", "completion": "Said"}]
    with pytest.raises(UserError, match=r"line 2: the row has the prompt_completion layout .* alpaca layout"):
        prep(write_jsonl(tmp_path / "m.jsonl", rows), task="instruction")


def test_every_problem_is_counted_but_examples_are_capped(prep, tmp_path):
    rows = [*GOOD, *(_msgs(("user", f"Hi {i}")) for i in range(30)), "{broken", "{broken"]
    path = write_jsonl(tmp_path / "many.jsonl", rows, raw=True)
    with pytest.raises(UserError) as info:
        prep(path)
    message = str(info.value)
    assert "32 problem(s)" in message
    assert "no_assistant_message: 30" in message and "invalid_json: 2" in message
    assert message.count("the conversation has no assistant message") == 3  # first three examples shown
    report = prep(path, on_invalid="skip", validation_ratio=0.0, test_ratio=0.0)
    assert report["rejected_by_reason"] == {"invalid_json": 2, "no_assistant_message": 30}
    assert len(report["problems"]["examples"]["no_assistant_message"]) == 5


@pytest.mark.parametrize("content", [b"", b"\n\n  \r\n", b"\xef\xbb\xbf"])
def test_empty_input(prep, tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match="no rows"):
        prep(path)


def test_skip_with_nothing_valid_left_is_an_error(prep, tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", ["{x", "{y"], raw=True)
    with pytest.raises(UserError, match=r"no valid rows to train on: 2 read, 2 rejected"):
        prep(path, on_invalid="skip")


def test_truncated_gzip_is_reported(prep, tmp_path):
    data = gzip.compress("\n".join(GOOD * 50).encode())
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"(?s)unreadable_file: 1 .*cut.jsonl.gz: cannot read the file"):
        prep(path)


def test_broken_json_array_stops_that_file_with_its_line(prep, tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[\n{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},\n'
                    '{"messages": oops}\n]', encoding="utf-8")
    with pytest.raises(UserError, match=r"a.json line 3: invalid JSON in item 2"):
        prep(path)


def test_duplicates_removed_and_counted(prep, tmp_path):
    rows = [chat_row(i) for i in range(10)] + [chat_row(3), chat_row(3), chat_row(7)]
    report = prep(write_jsonl(tmp_path / "d.jsonl", rows), validation_ratio=0.2, test_ratio=0.2)
    assert report["rows"]["duplicates_removed"] == 3
    assert report["duplicates"]["train"] == 3
    assert sum(report["rows"]["written"].values()) == 10
    written = [json.dumps(r, sort_keys=True) for r in prep.rows()]
    assert len(set(written)) == 10


@pytest.mark.slow
def test_command_line_exits_2_with_one_message_and_no_traceback(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], '{"messages": 3}'], raw=True)
    argv = argv_from_spec("data_prep", train_data=path, prepared_data=tmp_path / "p", data_report=tmp_path / "r")
    env_path = {"PYTHONPATH": str(REPO_ROOT / "src"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'm.db'}"}
    import os

    proc = subprocess.run([sys.executable, str(COMPONENTS_DIR / "data_prep" / "data_prep.py"), *argv],
                          capture_output=True, text=True, env={**os.environ, **env_path}, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{path} line 2: field 'messages': expected a list of messages, got integer" in proc.stderr


def test_corrupt_parquet_is_reported(prep, tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet PAR1")
    with pytest.raises(UserError, match=r"(?s)unreadable_file: 1 .*broken.parquet: cannot read the Parquet file"):
        prep(path)

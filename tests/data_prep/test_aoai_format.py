"""Rows in exactly the shapes Azure OpenAI's fine-tuning documentation shows (chat, multi-turn with
weights, tool calling, tool results), written for this project: Data Prep keeps what they mean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from tests.data_prep.conftest import write_jsonl

SAMPLE_TOOLS = Path(__file__).resolve().parents[2] / "data" / "sample" / "tools.jsonl"

# The docs' chat shape: system, user, assistant.
CHAT = {"messages": [
    {"role": "system", "content": "You are the Contoso Cycles support assistant. Be brief."},
    {"role": "user", "content": "Do you fix e-bikes?"},
    {"role": "assistant", "content": "Yes, our workshop services e-bikes of every brand."},
]}
# The docs' multi-turn shape: weight 0 on the turn not to learn, weight 1 on the one to learn.
WEIGHTS = {"messages": [
    {"role": "system", "content": "Contoso's assistant answers with dry humour."},
    {"role": "user", "content": "How many wheels does a bicycle have?"},
    {"role": "assistant", "content": "Two.", "weight": 0},
    {"role": "user", "content": "Can you be funnier?"},
    {"role": "assistant", "content": "Two, unless you count the spare in the shed.", "weight": 1},
]}
TOOL_DEFINITION = {"type": "function", "function": {
    "name": "check_stock", "description": "Units of a bike model in stock",
    "parameters": {"type": "object", "properties": {"model": {"type": "string", "description": "Model name"},
                                                    "store": {"type": "string", "enum": ["Seattle", "Portland"]}},
                   "required": ["model", "store"]}}}
ARGUMENTS = "{\"model\": \"Gravel Pro\", \"store\": \"Seattle\"}"
# The docs' tool-calling shape: an assistant turn that is only tool_calls, with the row's tools.
TOOL_CALL = {
    "messages": [
        {"role": "user", "content": "Is the Gravel Pro in stock in Seattle?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function",
                                               "function": {"name": "check_stock", "arguments": ARGUMENTS}}]},
    ],
    "tools": [TOOL_DEFINITION],
}
# The docs' tool-result shape, with "tools": [] exactly as the docs write it.
TOOL_RESULT = {
    "messages": [
        {"role": "user", "content": "Is the Gravel Pro in stock in Seattle?"},
        {"role": "assistant", "tool_calls": [{"id": "call_id", "type": "function",
                                               "function": {"name": "check_stock", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": "call_id", "content": "3"},
        {"role": "assistant", "content": "Yes, 3 Gravel Pro bikes are in the Seattle store."},
    ],
    "tools": [],
}
ROWS = [CHAT, WEIGHTS, TOOL_CALL, TOOL_RESULT]


def _prepared_rows(prep) -> list[dict]:
    return [json.loads(line) for line in (prep.prepared / "train.jsonl").read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_the_docs_rows_pass_and_keep_what_they_mean(prep, tmp_path):
    path = write_jsonl(tmp_path / "aoai.jsonl", ROWS)
    report = prep(path, validation_ratio=0.0, test_ratio=0.0)
    assert report["rows"]["rejected"] == 0 and report["rows"]["written"]["train"] == 4
    rows = {json.dumps(r["messages"][1]["content"]): r for r in _prepared_rows(prep)}
    assert rows[json.dumps(CHAT["messages"][1]["content"])] == CHAT
    assert rows[json.dumps(WEIGHTS["messages"][1]["content"])] == WEIGHTS  # weights kept as given
    tool_rows = [r for r in _prepared_rows(prep) if r["messages"][0]["content"].startswith("Is the Gravel")]
    by_length = {len(r["messages"]): r for r in tool_rows}
    call_row, result_row = by_length[2], by_length[4]
    # A tool-call turn gets content "" (templates read content as a string); everything else is kept.
    assert call_row["messages"][1] == {"role": "assistant", "content": "", **TOOL_CALL["messages"][1]}
    assert call_row["tools"] == [TOOL_DEFINITION]
    assert result_row["messages"][2] == {"role": "tool", "content": "3", "tool_call_id": "call_id"}
    assert "tools" not in result_row  # the empty list defines nothing
    assert "tools" not in report.get("ignored_columns", {})


def test_the_tools_sample_is_counted_in_tokens_with_a_template_that_renders_tools(prep, tiny_model_dir):
    report = prep(SAMPLE_TOOLS, model_path=tiny_model_dir, max_seq_length=512)
    assert report["rows"]["rejected"] == 0 and report["lengths"]["unit"] == "tokens"
    tool_rows = [r for r in _prepared_rows(prep) if any(m.get("tool_calls") for m in r["messages"])]
    called = [{c["function"]["name"] for m in r["messages"] for c in m.get("tool_calls", [])} for r in tool_rows]
    assert tool_rows and all(names <= {t["function"]["name"] for t in r["tools"]} for names, r in zip(called, tool_rows))


def test_a_chat_template_that_cannot_render_tools_stops_data_prep_with_the_fix(prep, tiny_model_dir, tmp_path):
    from trl.chat_template_utils import phi3_chat_template

    template = tmp_path / "phi3.jinja"
    template.write_text(phi3_chat_template, encoding="utf-8")
    with pytest.raises(UserError) as info:
        prep(SAMPLE_TOOLS, model_path=tiny_model_dir, chat_template=template)
    message = str(info.value)
    assert f"the chat template of {template} cannot render it" in message
    assert "drops the assistant's tool calls (tool_calls)" in message
    assert "give the chat_template input a Jinja template" in message
    # The same template is fine for data without function calling.
    report = prep(write_jsonl(tmp_path / "chat.jsonl", [CHAT, WEIGHTS]), model_path=tiny_model_dir,
                  chat_template=template, validation_ratio=0.0, test_ratio=0.0)
    assert report["lengths"]["unit"] == "tokens"


def test_a_broken_chat_template_fails_before_training(prep, tmp_path):
    template = tmp_path / "broken.jinja"
    template.write_text("{% for message in messages %}{{ message['content'] }}", encoding="utf-8")
    with pytest.raises(ConfigErrors) as info:
        prep(write_jsonl(tmp_path / "chat.jsonl", [CHAT]), chat_template=template)
    assert f"chat_template {template}: line 1:" in str(info.value) and "not a valid Jinja template" in str(info.value)

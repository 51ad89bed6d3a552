"""Fine-Tune on tool-calling data (the tools sample): it trains with a template that renders tools, and
stops before the model loads, with the fix, when the template cannot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.common.errors import UserError
from tests.finetune.conftest import outputs, write_prepared
from tests.helpers import argv_from_spec, load_entry

SAMPLE_TOOLS = Path(__file__).resolve().parents[2] / "data" / "sample" / "tools.jsonl"


@pytest.fixture(scope="module")
def prepared_tools(tmp_path_factory) -> Path:
    rows = [json.loads(line) for line in SAMPLE_TOOLS.read_text(encoding="utf-8").splitlines() if line.strip()]
    return write_prepared(tmp_path_factory.mktemp("prepared-tools"), rows, held_out=3)


def test_trains_on_tool_calls_with_the_tiny_template(tmp_path, tiny_model_dir, prepared_tools, mlflow_tracking):
    summary = load_entry("finetune").main(argv_from_spec(
        "finetune", train_data=prepared_tools, model_path=tiny_model_dir, learning_rate=0.005, max_steps=3,
        **outputs(tmp_path)))
    assert summary["steps"] == 3 and summary["tokens"] > 0
    saved = (tmp_path / "adapter" / "tokenizer_config.json").read_text() + "".join(
        p.read_text() for p in (tmp_path / "adapter").glob("chat_template.jinja"))
    assert "tool_call" in saved  # the template that rendered the tools travels with the model


def test_a_template_without_tools_stops_before_the_model_loads(tmp_path, tiny_model_dir, prepared_tools,
                                                                mlflow_tracking, monkeypatch):
    from trl.chat_template_utils import phi3_chat_template

    template = tmp_path / "phi3.jinja"
    template.write_text(phi3_chat_template, encoding="utf-8")

    def no_model_load(*args, **kwargs):
        raise AssertionError("the model must not load")

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", no_model_load)
    with pytest.raises(UserError) as info:
        load_entry("finetune").main(argv_from_spec(
            "finetune", train_data=prepared_tools, model_path=tiny_model_dir, chat_template=template,
            **outputs(tmp_path)))
    message = str(info.value)
    assert "train.jsonl line 1 has function calling" in message
    assert f"the chat template of {template} cannot render it" in message
    assert "Phi-4-mini" in message and "chat_template input" in message

"""Chat templates: the `chat_template` input, and whether a template can render function calling.

A template that ignores `tools`, drops `tool_calls` or skips `tool` messages would train the model
on conversations with holes in them, silently. `check_tools_support` renders one probe conversation
(a tool definition, a tool call, a tool result) and stops with the fix when any part is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

_PROBE_TOOLS = [{
    "type": "function",
    "function": {
        "name": "maap_probe_tool",
        "description": "maap probe",
        "parameters": {"type": "object", "properties": {"maap_probe_arg": {"type": "string"}}},
    },
}]
_PROBE = [
    {"role": "user", "content": "maap probe question"},
    {"role": "assistant", "content": "", "tool_calls": [{
        "id": "call_maap_probe", "type": "function",
        "function": {"name": "maap_probe_tool", "arguments": '{"maap_probe_arg": "maap_probe_value"}'},
    }]},
    {"role": "tool", "tool_call_id": "call_maap_probe", "content": "maap_probe_result"},
    {"role": "assistant", "content": "maap probe answer"},
]


def load_chat_template(path: str | Path) -> str:
    """The Jinja text of a `chat_template` file (a .jinja file, or a tokenizer_config.json holding one)."""
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"chat_template {path}: cannot read it ({err})") from None
    if path.suffix == ".json":
        try:
            text = json.loads(text).get("chat_template")
        except (ValueError, AttributeError) as err:
            raise UserError(f"chat_template {path}: not a tokenizer_config.json with a chat_template ({err})") from None
        if isinstance(text, list):  # named templates: the default one
            text = next((t.get("template") for t in text if t.get("name") == "default"), None)
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"chat_template {path}: the file holds no template; give a Jinja chat template")
    return text


def apply_chat_template_file(tokenizer: Any, path: str | Path | None) -> bool:
    """Replace the tokenizer's template with the one in `path`; True when it did."""
    if path is None:
        return False
    tokenizer.chat_template = load_chat_template(path)
    return True


def tools_support_gaps(tokenizer: Any) -> list[str]:
    """What the tokenizer's chat template loses of a function-calling conversation (empty: nothing)."""
    from jinja2 import TemplateError

    try:
        prompt = tokenizer.apply_chat_template(_PROBE[:1], tools=_PROBE_TOOLS, tokenize=False,
                                               add_generation_prompt=True)
        full = tokenizer.apply_chat_template(_PROBE, tools=_PROBE_TOOLS, tokenize=False)
    except (TemplateError, TypeError, KeyError, ValueError) as err:
        return [f"fails on it ({type(err).__name__}: {err})"]
    gaps = []
    if "maap_probe_tool" not in prompt:
        gaps.append("does not show the tool definitions (tools) in the prompt")
    if "maap_probe_value" not in full:
        gaps.append("drops the assistant's tool calls (tool_calls)")
    if "maap_probe_result" not in full:
        gaps.append("drops the tool results (role tool)")
    return gaps


def check_tools_support(tokenizer: Any, model: str, where: str) -> None:
    """Stop with the fix when the data has function calling and the template cannot render it."""
    gaps = tools_support_gaps(tokenizer)
    if gaps:
        raise UserError(
            f"{where} has function calling (tools, tool_calls or tool messages), but the chat template of {model} "
            f"cannot render it: the template {'; '.join(gaps)}. Fix: use a base model whose chat template supports "
            "tools (for example microsoft/Phi-4-mini-instruct; Phi-3-mini's does not), or give the chat_template "
            "input a Jinja template that renders tools, tool_calls and tool messages"
        )

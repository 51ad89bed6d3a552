"""The Azure OpenAI fine-tuning format's extras for chat rows: `weight`, `tools`, `tool_calls`, `tool`.

Checked as the service checks them: `weight` is 0 or 1 on assistant messages; `tools` is a list
of `{"type": "function", "function": {"name", ...}}`; each tool call has an `id`, a function `name`
(one of the row's tools when the row gives any) and `arguments`, a JSON string of an object; a
`tool` message's `tool_call_id` answers an earlier call of the same row. Each problem is a
`RowError` naming the field, so the report gives file:line:field.
"""

from __future__ import annotations

import re
from typing import Any

from maap_finetune.data.jsonfast import loads
from maap_finetune.data.problems import RowError

# OpenAI's rule for function names.
FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def check_weight(value: Any, where: str, role: str) -> int:
    """A message's weight: 0 (not learned) or 1 (learned); only assistant messages carry one."""
    if role != "assistant":
        raise RowError("invalid_weight", f"{where}.weight",
                       f"weight applies to assistant messages only, not to a {role} message; remove it")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 1):
        raise RowError("invalid_weight", f"{where}.weight", f"weight must be 0 or 1, got {value!r}")
    return int(value)


def check_tools(value: Any, field: str) -> list[dict]:
    """The row's tool definitions, as given; raises RowError on the first bad one."""
    if not isinstance(value, list):
        raise RowError("invalid_tool", field, f"expected a list of tool definitions, got {_kind(value)}")
    names: set[str] = set()
    for j, tool in enumerate(value):
        where = f"{field}[{j}]"
        if not isinstance(tool, dict):
            raise RowError("invalid_tool", where, f"expected a tool object, got {_kind(tool)}")
        if tool.get("type") != "function":
            raise RowError("invalid_tool", f"{where}.type", f"type must be 'function', got {tool.get('type')!r}")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise RowError("invalid_tool", f"{where}.function", f"expected an object, got {_kind(function)}")
        name = function.get("name")
        if not isinstance(name, str) or not FUNCTION_NAME.match(name):
            raise RowError("invalid_tool", f"{where}.function.name",
                           f"the name must be 1-64 letters, digits, '_' or '-', got {name!r}")
        if name in names:
            raise RowError("invalid_tool", f"{where}.function.name", f"function {name!r} is defined twice")
        names.add(name)
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise RowError("invalid_tool", f"{where}.function.parameters",
                           f"expected a JSON schema object, got {_kind(parameters)}")
    return value


def check_tool_calls(value: Any, where: str, tool_names: set[str] | None, call_ids: set[str]) -> list[dict]:
    """An assistant message's tool calls, cleaned; their ids are added to `call_ids`."""
    field = f"{where}.tool_calls"
    if not isinstance(value, list) or not value:
        raise RowError("wrong_type", field, f"expected a non-empty list of tool calls, got {value!r:.60}")
    calls = []
    for k, call in enumerate(value):
        at = f"{field}[{k}]"
        if not isinstance(call, dict):
            raise RowError("wrong_type", at, f"expected a tool call object, got {_kind(call)}")
        if call.get("type", "function") != "function":
            raise RowError("unsupported_field", f"{at}.type", f"type must be 'function', got {call.get('type')!r}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise RowError("missing_content", f"{at}.id", "a tool call needs an id (a non-empty string)")
        function = call.get("function")
        if not isinstance(function, dict):
            raise RowError("wrong_type", f"{at}.function", f"expected an object, got {_kind(function)}")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise RowError("missing_content", f"{at}.function.name", "the function name is missing")
        if tool_names is not None and name not in tool_names:
            raise RowError("unknown_tool", f"{at}.function.name",
                           f"function {name!r} is not in the row's tools ({', '.join(sorted(tool_names))})")
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            raise RowError("invalid_arguments", f"{at}.function.arguments",
                           f"arguments must be a JSON string (the object serialized), got {_kind(arguments)}")
        try:
            parsed = loads(arguments)
        except ValueError as err:
            raise RowError("invalid_arguments", f"{at}.function.arguments",
                           f"arguments is not valid JSON ({err})") from None
        if not isinstance(parsed, dict):
            raise RowError("invalid_arguments", f"{at}.function.arguments",
                           f"arguments must encode a JSON object, got {_kind(parsed)}")
        call_ids.add(call_id)
        calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    return calls


def check_tool_call_id(value: Any, where: str, call_ids: set[str]) -> str:
    if not isinstance(value, str) or not value:
        raise RowError("missing_content", f"{where}.tool_call_id",
                       "a tool message needs the tool_call_id of the call it answers")
    if value not in call_ids:
        known = ", ".join(sorted(call_ids)) or "none"
        raise RowError("unknown_tool_call_id", f"{where}.tool_call_id",
                       f"{value!r} answers no earlier tool call of this conversation (earlier call ids: {known})")
    return value


def row_uses_tools(row: dict) -> bool:
    """Whether a prepared `messages` row needs a template that renders function calling."""
    return bool(row.get("tools")) or any(
        m.get("role") == "tool" or m.get("tool_calls") for m in row.get("messages", ())
    )

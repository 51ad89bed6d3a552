"""Tool-call metrics for test rows whose reference (the last assistant turn) is a tool call.

Models write calls in their template's syntax (Phi-4-mini: `<|tool_call|>[{"name": ..., "arguments":
{...}}]<|/tool_call|>`; Hermes/Qwen: `<tool_call>{...}</tool_call>`; Llama 3.1: `{"name": ...,
"parameters": {...}}`). All of them hold JSON objects with a `name` and `arguments` (or `parameters`),
so calls are read back from every JSON value found in the generated text, in order.

- `tool_name_accuracy`: share of rows whose called function names equal the reference's, in order.
- `tool_arguments_exact_match`: share of rows whose calls equal the reference's, names and arguments
  compared as parsed JSON (key order and spacing do not matter).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

TOOL_METRICS = {
    "tool_name_accuracy": "share of tool-call references whose function names were called, in order",
    "tool_arguments_exact_match": "share of tool-call references matched exactly (names and JSON-equal arguments)",
}

Call = tuple[str, Any]


def _as_arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _calls_in(value: Any) -> list[Call]:
    if isinstance(value, list):
        return [call for item in value for call in _calls_in(item)]
    if isinstance(value, dict):
        inner = value.get("function") if isinstance(value.get("function"), dict) else value
        name = inner.get("name")
        if isinstance(name, str) and ("arguments" in inner or "parameters" in inner):
            return [(name, _as_arguments(inner.get("arguments", inner.get("parameters"))))]
    return []


def parse_tool_calls(text: str) -> list[Call]:
    """(name, arguments) of every call written as JSON in `text`, in order."""
    decoder = json.JSONDecoder()
    calls: list[Call] = []
    index = 0
    while index < len(text):
        starts = [i for i in (text.find("{", index), text.find("[", index)) if i >= 0]
        if not starts:
            break
        start = min(starts)
        try:
            value, end = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        calls += _calls_in(value)
        index = end
    return calls


def reference_calls(message: dict) -> list[Call] | None:
    """The calls of a reference assistant message, or None when it makes none."""
    calls = message.get("tool_calls")
    if not calls:
        return None
    return [(c["function"]["name"], _as_arguments(c["function"]["arguments"])) for c in calls]


def tool_call_metrics(outputs: Sequence[str], references: Sequence[list[Call]]) -> dict[str, float]:
    """The two metrics over rows with a tool-call reference; empty when there are none."""
    if not references:
        return {}
    names = exact = 0
    for output, expected in zip(outputs, references):
        predicted = parse_tool_calls(output)
        names += [n for n, _ in predicted] == [n for n, _ in expected]
        exact += predicted == expected
    return {"tool_name_accuracy": names / len(references), "tool_arguments_exact_match": exact / len(references)}

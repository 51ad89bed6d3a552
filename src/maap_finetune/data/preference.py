"""Task `preference`: pairs of a preferred and a rejected answer to the same prompt (DPO data).

Accepted layouts (columns renamed with prompt_key / chosen_key / rejected_key):
- Azure OpenAI DPO: `{"input": {"messages": [...], "tools": [...]}, "preferred_output": [assistant
  message], "non_preferred_output": [assistant message]}`;
- TRL explicit prompt: `prompt` / `chosen` / `rejected` as strings, or as conversations (the prompt a
  list of messages, each side a list of assistant messages);
- TRL implicit prompt: `chosen` / `rejected` as whole conversations; the prompt is the messages they
  share from the start (TRL's `extract_prompt`).

Every row becomes `{"prompt": [messages ending with a user turn], "chosen": [assistant messages],
"rejected": [assistant messages], "tools"?: [...]}`, which TRL's DPOTrainer reads as it is.
"""

from __future__ import annotations

from typing import Any

from maap_finetune.data.function_calling import check_tools
from maap_finetune.data.problems import RowError


def _kind(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(value), type(value).__name__)


def _structured_cell(value: Any, tabular: bool) -> Any:
    """CSV/TSV cells may hold a conversation as JSON."""
    if tabular and isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        from maap_finetune.data.jsonfast import loads

        try:
            return loads(value)
        except ValueError:
            return value
    return value


def _messages(adapter, value: list, field: str, tool_names: set[str] | None, call_ids: set[str]) -> list[dict]:
    if not value:
        raise RowError("missing_content", field, "the conversation has no messages")
    out = []
    for i, message in enumerate(value):
        clean = adapter._chat_message(message, i, field, tool_names, call_ids)
        if "weight" in clean:
            raise RowError("unsupported_field", f"{field}[{i}].weight",
                           "weight has no meaning in preference data (both answers are scored); remove it")
        out.append(clean)
    return out


def _completion(adapter, value: Any, field: str, tabular: bool, tool_names, call_ids) -> list[dict]:
    """One side of the pair: a string, or a list of assistant messages."""
    value = _structured_cell(value, tabular)
    if value is None:
        raise RowError("missing_content", field, "the answer is null")
    if isinstance(value, str):
        if not value.strip():
            raise RowError("missing_content", field, "the answer is empty")
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict) and "role" in value:
        value = [value]
    if not isinstance(value, list):
        raise RowError("wrong_type", field, f"expected a string or a list of assistant messages, got {_kind(value)}")
    messages = _messages(adapter, value, field, tool_names, set(call_ids))
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            raise RowError("completion_role", f"{field}[{i}].role",
                           f"a {message['role']} message in the answer; each side holds assistant messages only "
                           "(put the conversation before them in the prompt)")
    return messages


def _prompt(adapter, value: Any, field: str, tabular: bool) -> tuple[list[dict], list | None]:
    """The prompt: a string (one user turn), a conversation, or Azure OpenAI's {"messages", "tools"}."""
    value = _structured_cell(value, tabular)
    tools = None
    if isinstance(value, dict):
        unknown = sorted(set(value) - {"messages", "tools"})
        if unknown:
            raise RowError("unsupported_field", f"{field}.{unknown[0]}",
                           f"field {unknown[0]!r} is not supported in the input (allowed: messages, tools)")
        if value.get("tools") is not None:
            tools = check_tools(value["tools"], f"{field}.tools")
        if "messages" not in value:
            raise RowError("missing_column", f"{field}.messages", "the input has no messages")
        field, value = f"{field}.messages", value["messages"]
    if value is None:
        raise RowError("missing_content", field, "the prompt is null")
    if isinstance(value, str):
        if not value.strip():
            raise RowError("missing_content", field, "the prompt is empty")
        return [{"role": "user", "content": value}], tools
    if not isinstance(value, list):
        raise RowError("wrong_type", field, f"expected a string or a list of messages, got {_kind(value)}")
    return value, tools


def _check_prompt(prompt: list[dict], field: str) -> None:
    last = prompt[-1]
    if last["role"] != "user":
        raise RowError("prompt_not_user", f"{field}[{len(prompt) - 1}].role",
                       f"the prompt ends with a {last['role']} message; it must end with the user turn both answers "
                       "reply to")


def _shared_prefix(chosen: list, rejected: list) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return n


def extract_preference(adapter, row: dict, columns: dict[str, str], tabular: bool) -> dict:
    """Check one preference row and return its normalized record, or raise RowError."""
    ccol, rcol = columns["chosen"], columns["rejected"]
    tools = row.get("tools") if "prompt" not in columns else None
    if tools is not None:
        tools = check_tools(_structured_cell(tools, tabular), "tools")
    if "prompt" in columns:
        pcol = columns["prompt"]
        raw, tools = _prompt(adapter, row[pcol], pcol, tabular)
        field = f"{pcol}.messages" if isinstance(_structured_cell(row[pcol], tabular), dict) else pcol
        tool_names = {t["function"]["name"] for t in tools} if tools else None
        call_ids: set[str] = set()
        prompt = _messages(adapter, raw, field, tool_names, call_ids)
        chosen = _completion(adapter, row[ccol], ccol, tabular, tool_names, call_ids)
        rejected = _completion(adapter, row[rcol], rcol, tabular, tool_names, call_ids)
    else:  # implicit prompt: two whole conversations sharing their start
        tool_names = {t["function"]["name"] for t in tools} if tools else None
        sides = []
        for col in (ccol, rcol):
            value = _structured_cell(row[col], tabular)
            if isinstance(value, str):
                raise RowError("wrong_type", col,
                               "a string answer needs a prompt column; without one, chosen and rejected must be "
                               "whole conversations that share the prompt")
            if not isinstance(value, list):
                raise RowError("wrong_type", col, f"expected a conversation (list of messages), got {_kind(value)}")
            sides.append(_messages(adapter, value, col, tool_names, set()))
        cut = _shared_prefix(*sides)
        if cut == 0:
            raise RowError("prompt_not_user", ccol,
                           "chosen and rejected share no messages, so there is no prompt; start both with the same "
                           "conversation or give a prompt column")
        field = ccol
        prompt, chosen, rejected = sides[0][:cut], sides[0][cut:], sides[1][cut:]
        for col, side in ((ccol, chosen), (rcol, rejected)):
            if not side:
                raise RowError("missing_content", col, "nothing follows the shared prompt: the answer is empty")
            for i, message in enumerate(side, start=cut):
                if message["role"] != "assistant":
                    raise RowError("completion_role", f"{col}[{i}].role",
                                   f"a {message['role']} message after the shared prompt; the answers must be "
                                   "assistant messages")
    if not any(m["role"] == "user" for m in prompt):
        raise RowError("no_user_message", field, "the prompt has no user message")
    _check_prompt(prompt, field)
    if chosen == rejected:
        raise RowError("identical_pair", rcol, "the rejected answer is identical to the chosen one; nothing to prefer")
    if adapter.system_prompt and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": adapter.system_prompt}, *prompt]
    if tools:
        adapter.uses_tools = True
    if any("tool_calls" in m or m["role"] == "tool" for m in (*prompt, *chosen, *rejected)):
        adapter.uses_tools = True
    record = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if tools:
        record["tools"] = tools
    return record


def completion_text(messages: list[dict]) -> str:
    return "".join(m["content"] for m in messages)

"""Task `rft`: Azure OpenAI's reinforcement fine-tuning data, a prompt plus the fields graders read.

A row is `{"messages": [... ending with a user turn], "tools"?: [...], <any reference fields>}`, as the
RFT docs define it: the model writes the answer, the graders judge it against the row. Each message is
checked like a chat message (`developer` is read as `system`, the role chat templates know); the last
one must be the user's. Every other field is kept as it is, at the top level, because the graders'
`{{item.<field>}}` templates read the prepared row. With a graders file, a row lacking a field one of
its templates reads is a `missing_field` problem naming the field and the grader.
"""

from __future__ import annotations

from typing import Any

from maap_finetune.data.function_calling import check_tools
from maap_finetune.data.preference import _structured_cell
from maap_finetune.data.problems import RowError


def extract_rft(adapter, row: dict, columns: dict[str, str], tabular: bool) -> dict[str, Any]:
    col = columns["messages"]
    messages = _structured_cell(row[col], tabular)
    if type(messages) is not list:
        raise RowError("wrong_type", col, f"expected a list of messages, got {type(messages).__name__}")
    if not messages:
        raise RowError("missing_content", col, "the prompt has no messages")
    tools = _structured_cell(row.get("tools"), tabular)
    if tools is not None:
        tools = check_tools(tools, "tools")
    tool_names = {t["function"]["name"] for t in tools} if tools else None
    call_ids: set[str] = set()
    out = []
    for i, message in enumerate(messages):
        if isinstance(message, dict) and message.get("role") == "developer":
            message = {**message, "role": "system"}
        clean = adapter._chat_message(message, i, col, tool_names, call_ids)
        if "weight" in clean:
            raise RowError("unsupported_field", f"{col}[{i}].weight",
                           "weight has no meaning in an rft prompt (the graders score the model's answer); remove it")
        out.append(clean)
    if out[-1]["role"] != "user":
        raise RowError("last_not_user", f"{col}[{len(out) - 1}]",
                       f"the last message is from the {out[-1]['role']}; an rft prompt ends with the user turn the "
                       "model answers (the graders judge the model's own answer, so leave the reference answer in "
                       "a field of its own)")
    record = {"messages": out, **{k: v for k, v in row.items() if k not in (col, "messages", "tools")}}
    if tools:
        adapter.uses_tools = True
        record["tools"] = tools
    graders = adapter.graders
    if graders is not None:
        from maap_finetune.graders.templates import missing

        for path, grader in graders.item_paths:
            if missing(record, path):
                raise RowError("missing_field", ".".join(path),
                               f"missing, read by grader {grader!r} ({graders.file}); add it to every row, or "
                               "change the grader's template")
    return record

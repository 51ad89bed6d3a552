"""Tasks: how each row of a task is validated, reduced to its fields and rendered.

`extract(row)` checks one source row and returns a compact record (the task's fields, or for chat
the cleaned conversation) or raises `RowError` naming the field and reason. `render(record)` turns a
record into an output row of the prepared-data contract: `{"messages": [...]}` whose last message is
the assistant turn, or `{"text": ...}` for task `text`. Rendering happens after every row has been
checked, because some prompts list the label set, which is only known then.

Columns are found from the `*_key` inputs, or, when those are unset, from the usual names of each
layout (listed in `SCHEMAS`). The first valid row fixes the layout; a later row in another layout is
a `mixed_schema` problem.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from string import Formatter
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.data.function_calling import check_tool_call_id, check_tool_calls, check_tools, check_weight
from maap_finetune.data.jsonfast import loads
from maap_finetune.data.problems import RowError

TASKS = ("chat", "instruction", "classification", "ner", "translation", "qa", "summarization", "text", "preference",
         "rft")
MAX_LABELS = 10_000
CHAT_ROLES = ("system", "user", "assistant", "tool")
OPENAI_MESSAGE_FIELDS = ("role", "content", "name", "weight", "tool_calls", "tool_call_id")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
}
_TAG = re.compile(r"^([BI])-(.+)$")
_INTEGER = re.compile(r"^\s*-?\d+\s*$")
# End-of-text markers of the formats accepted (OpenAI legacy completions, Llama, ChatML, Phi-3, Gemma):
# the chat template adds the model's own, so a literal one in a target is learned as text.
END_MARKERS = ("<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<|eot_id|>", "<|end|>", "</s>", "<eos>")
# Words that make an unread column look like a label, a weight or a preference marker (see `_meaningful`).
_MARKER_WORDS = {"label", "labels", "weight", "weights", "score", "scores", "rating", "ratings", "reward", "rewards",
                 "preferred", "preference", "chosen", "rejected", "desirable", "undesirable", "accepted",
                 "approved", "kto"}


@dataclass(frozen=True)
class Schema:
    """One accepted layout of a task: each role's candidate column names, in order of preference."""

    name: str
    columns: dict[str, tuple[str, ...]]
    optional: dict[str, tuple[str, ...]] = field(default_factory=dict)


# Which `*_key` input overrides which role of a layout.
KEY_INPUTS: dict[str, dict[str, str]] = {
    "chat": {"messages": "messages_key"},
    "instruction": {"instruction": "prompt_key", "input": "input_key", "output": "completion_key"},
    "classification": {"text": "text_key", "label": "label_key"},
    "ner": {"tokens": "token_key", "tags": "tag_key"},
    "translation": {"source": "source_key", "target": "target_key"},
    "qa": {"context": "context_key", "question": "question_key", "answers": "answers_key"},
    "summarization": {"document": "document_key", "summary": "summary_key"},
    "text": {"text": "text_key"},
    "preference": {"prompt": "prompt_key", "chosen": "chosen_key", "rejected": "rejected_key"},
    "rft": {"messages": "messages_key"},
}

SCHEMAS: dict[str, list[Schema]] = {
    "chat": [
        Schema("openai_messages", {"messages": ("messages",)}),
        Schema("sharegpt", {"messages": ("conversations",)}),
    ],
    "instruction": [
        Schema("alpaca", {"instruction": ("instruction",), "output": ("output",)}, {"input": ("input",)}),
        Schema("prompt_completion", {"instruction": ("prompt",), "output": ("completion",)}),
    ],
    "classification": [Schema("text_label", {"text": ("text", "sentence"), "label": ("label",)})],
    "ner": [Schema("tokens_tags", {"tokens": ("tokens",), "tags": ("ner_tags", "tags")})],
    "translation": [
        Schema("hf_translation", {"pair": ("translation",)}),
        Schema("language_columns", {"source": ("{source_lang}",), "target": ("{target_lang}",)}),
        Schema("source_target", {"source": ("source",), "target": ("target",)}),
    ],
    "qa": [
        Schema("extractive", {"context": ("context",), "question": ("question",), "answers": ("answers",)}),
        Schema("closed_book", {"question": ("question",), "answers": ("answer", "answers")}),
    ],
    "summarization": [
        Schema("document_summary", {"document": ("document", "article", "dialogue", "text"),
                                    "summary": ("summary", "highlights")}),
    ],
    "text": [Schema("text", {"text": ("text", "content")})],
    "preference": [
        Schema("aoai_dpo", {"prompt": ("input",), "chosen": ("preferred_output",),
                            "rejected": ("non_preferred_output",)}),
        Schema("prompt_chosen_rejected", {"prompt": ("prompt",), "chosen": ("chosen",), "rejected": ("rejected",)}),
        Schema("implicit_prompt", {"chosen": ("chosen",), "rejected": ("rejected",)}),
    ],
    "rft": [Schema("aoai_rft", {"messages": ("messages",)})],
}

# Placeholders each template may use, per task.
TEMPLATE_FIELDS: dict[str, dict[str, tuple[str, ...]]] = {
    "instruction": {"prompt": ("instruction", "input"), "prompt_with_input": ("instruction", "input"),
                    "completion": ("output",)},
    "classification": {"prompt": ("text", "labels"), "completion": ("label",)},
    "ner": {"prompt": ("text", "entity_types"), "completion": ("entities",), "entity": ("type", "text")},
    "translation": {"prompt": ("source", "source_lang", "target_lang"), "completion": ("target",)},
    "qa": {"prompt": ("context", "question"), "prompt_closed_book": ("question",), "completion": ("answer",)},
    "summarization": {"prompt": ("document",), "completion": ("summary",)},
    "chat": {},
    "text": {},
    "preference": {},
    "rft": {},
}


def template_placeholders(template: str) -> set[str]:
    """The `{name}` placeholders of a str.format template (raises ValueError on bad braces)."""
    return {name for _, name, _, _ in Formatter().parse(template) if name is not None}


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _text(value: Any, field_name: str, tabular: bool = False) -> str:
    """A non-empty string value."""
    if value is None:
        raise RowError("missing_content", field_name, "the value is null")
    if not isinstance(value, str):
        raise RowError("wrong_type", field_name, f"expected a string, got {_type_name(value)}")
    if not value.strip():
        raise RowError("missing_content", field_name, "the value is empty")
    return value


def _structured(value: Any, field_name: str, tabular: bool, kind: type, what: str) -> Any:
    """A list/dict value; CSV/TSV cells may hold it JSON-encoded."""
    if tabular and isinstance(value, str):
        stripped = value.strip()
        if not stripped:
            raise RowError("missing_content", field_name, "the value is empty")
        if stripped[0] in "[{":
            try:
                value = loads(stripped)
            except ValueError as err:
                raise RowError("wrong_type", field_name, f"the cell is not valid JSON: {err}") from None
        elif kind is list:
            value = stripped.split()  # whitespace-separated tokens or tags
    if value is None:
        raise RowError("missing_content", field_name, "the value is null")
    if not isinstance(value, kind):
        raise RowError("wrong_type", field_name, f"expected {what}, got {_type_name(value)}")
    return value


class TaskAdapter:
    """Validates, extracts and renders the rows of one task."""

    def __init__(self, task: str, keys: dict[str, str | None], templates: dict[str, Any],
                 label_names: Sequence[str] | None = None, source_lang: str | None = None,
                 target_lang: str | None = None, system_prompt: str | None = None,
                 drop_columns: Sequence[str] = (), graders: Any = None):
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        self.task = task
        self.templates = templates
        self.label_names = list(label_names) if label_names else None
        self._label_index = {name: i for i, name in enumerate(self.label_names or [])}
        self.source_lang = source_lang
        self.target_lang = target_lang
        self.system_prompt = system_prompt
        self.keys = {name: value for name, value in keys.items() if value}  # the *_key inputs the user set
        self.drop_columns = set(drop_columns)
        self.graders = graders  # rft: the loaded graders file, whose templates say which fields a row needs
        self.schemas = self._schemas_with_keys(keys)
        self.label_rows: dict[str, list[str]] = {}  # classification: label -> first rows holding it
        self.end_markers_stripped = 0
        self._keys_checked = False
        self._where = ""
        self.schema: Schema | None = None  # fixed by the first valid row
        self.columns: dict[str, str] = {}
        self.first_seen: str | None = None
        self.labels_seen: dict[str, int] = {}  # label (classification) or tag (ner) -> rows
        self.ignored_columns: dict[str, int] = {}
        self.chat_style: str | None = None
        self.uses_tools = False  # some row has tools, tool calls or tool messages (needs a tools template)
        self.output_format = {"text": "text", "preference": "preference", "rft": "rft"}.get(task, "messages")

    # ----- layout detection -------------------------------------------------------------------
    def _schemas_with_keys(self, keys: dict[str, str | None]) -> list[Schema]:
        overrides = {role: keys[name] for role, name in KEY_INPUTS[self.task].items() if keys.get(name)}
        result = []
        for schema in SCHEMAS[self.task]:
            def fill(cols: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
                out = {}
                for role, candidates in cols.items():
                    if role in overrides:
                        candidates = (overrides[role],)
                    out[role] = tuple(c.format(source_lang=self.source_lang, target_lang=self.target_lang)
                                      for c in candidates)
                return out

            result.append(Schema(schema.name, fill(schema.columns), fill(schema.optional)))
        if self.task == "chat" and "messages" in overrides:
            result = [Schema("messages", {"messages": (overrides["messages"],)})]
        if self.task == "preference" and overrides:  # the keys name the columns, whatever the source layout
            result = [s for s in result if s.name != "aoai_dpo"]
        if self.task == "translation" and ("source" in overrides or "target" in overrides):
            result = [s for s in result if s.name == "source_target"]  # the keys name the columns
        return result

    @staticmethod
    def _match(schema: Schema, row: dict) -> dict[str, str] | None:
        found = {}
        for role, candidates in schema.columns.items():
            column = next((c for c in candidates if c in row), None)
            if column is None:
                return None
            found[role] = column
        for role, candidates in schema.optional.items():
            column = next((c for c in candidates if c in row), None)
            if column is not None:
                found[role] = column
        return found

    def _columns_for(self, row: dict) -> tuple[Schema, dict[str, str]]:
        """The layout and columns of a row; the first valid row fixes them for the dataset."""
        if self.schema is not None:
            columns = self.columns
            if all(columns[role] in row for role in self.schema.columns):
                return self.schema, columns
        for schema in self.schemas:
            match = self._match(schema, row)
            if match is None:
                continue
            if self.schema is not None:
                raise RowError(
                    "mixed_schema", None,
                    f"the row has the {schema.name} layout (columns {', '.join(sorted(match.values()))}) but the "
                    f"dataset's first rows ({self.first_seen}) have the {self.schema.name} layout "
                    f"(columns {', '.join(sorted(self.columns.values()))})",
                )
            return schema, match
        if self.schema is not None:
            roles = [r for r in self.schema.columns if self.columns[r] not in row]
            need = ", ".join(repr(self.columns[r]) for r in roles)
        else:
            roles = [r for s in self.schemas for r in s.columns]
            need = " or ".join(
                "{" + ", ".join("|".join(c) for c in s.columns.values()) + "}" for s in self.schemas
            )
        found = ", ".join(repr(c) for c in row) or "none"
        raise RowError("missing_column", None, f"missing column(s) {need} (columns found: {found})"
                       + self._key_hint(roles))

    def _key_hint(self, roles: Iterable[str]) -> str:
        """Which `*_key` inputs name the columns of these roles (every missing-column message says it)."""
        names = []
        for role in roles:
            name = KEY_INPUTS[self.task].get(role)
            if name is None and role == "pair":
                name = "source_key and target_key"
            if name is not None and name not in names:
                names.append(name)
        return f"; name the columns with {', '.join(names)}" if names else ""

    def _check_keys(self, row: dict, where: str) -> None:
        """Every `*_key` the user set names a field the data has: a mistyped one would otherwise be ignored
        (an optional column silently absent, or another layout chosen)."""
        self._keys_checked = True
        for name, value in self.keys.items():
            if value not in row:
                found = ", ".join(repr(c) for c in row) or "none"
                raise UserError(f"{where}: {name} {value!r} names no field of the data (fields seen: {found}); "
                                f"set {name} to one of them, or leave it unset to use the default column names")

    def absent_optional(self) -> dict[str, str]:
        """Optional fields left at their default names that the data does not have: role -> its `*_key`."""
        if self.schema is None:
            return {}
        absent = [role for role in self.schema.optional if role not in self.columns]
        if self.schema.name == "closed_book":
            absent.append("context")
        return {role: KEY_INPUTS[self.task][role] for role in absent}

    # ----- extraction -------------------------------------------------------------------------
    def extract(self, row: Any, where: str, tabular: bool = False) -> dict:
        """Check one row; return its record or raise RowError."""
        if type(row) is not dict:
            raise RowError("wrong_type", None, f"expected a JSON object per row, got {_type_name(row)}")
        if not self._keys_checked:
            self._check_keys(row, where)
        self._where = where
        if self.task == "chat" and self.schema is not None and self.columns["messages"] in row:
            if len(row) > 1:
                self._count_ignored(row, self.columns)
            return self._extract_chat(row, self.columns, tabular)  # the hot path
        schema, columns = self._columns_for(row)
        record = getattr(self, f"_extract_{self.task}")(row, columns, tabular)
        if self.schema is None:
            self.schema = schema
            self.columns = columns
            self.first_seen = where
        if len(row) > len(columns) and self.task != "rft":  # rft keeps every field, for the graders
            self._count_ignored(row, columns)
        return record

    def _count_ignored(self, row: dict, columns: dict[str, str]) -> None:
        """Columns the task does not read are dropped, and counted in the report (up to 100 names); one
        that looks like a label, weight or preference marker is an error unless drop_columns lists it."""
        used = (*columns.values(), "tools") if self.task in ("chat", "preference") else columns.values()
        for name in row:
            if name in used:
                continue
            if name not in self.ignored_columns:
                if len(self.ignored_columns) >= 100:
                    continue
                if name not in self.drop_columns:
                    self._refuse_meaningful(name, row[name])
            self.ignored_columns[name] = self.ignored_columns.get(name, 0) + 1

    def _refuse_meaningful(self, name: str, value: Any) -> None:
        if self.task == "preference":
            return  # the pair is the preference; scores beside it (UltraFeedback's score_chosen) only restate it
        words = set(re.split(r"[^a-z0-9]+", str(name).lower()))
        binary = isinstance(value, bool) or (self.task == "classification" and (
            (type(value) is int and value in (0, 1))
            or (isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"))))
        if binary and not isinstance(value, bool) and (words & {"id", "idx", "index", "uid"}
                                                       or str(name).lower().endswith("id")):
            binary = False  # a row id that happens to be 0 or 1
        if not (words & _MARKER_WORDS or binary):
            return
        mapped = ", ".join(f"{r}={c}" for r, c in self.columns.items()) or "none yet"
        if self.task == "classification" and binary:
            why = ("it looks like one more label column (multi-label data): this step trains one label per row, "
                   f"from label_key's column, so the others would be lost")
        elif isinstance(value, bool):
            why = ("a true/false marker per row (KTO-style feedback) decides whether a row is wanted; dropped, "
                   "rows marked false would be trained as targets")
        else:
            why = "it looks like a label, weight or preference marker, which changes what a row means"
        raise UserError(
            f"{self._where}: field {name!r} (value {value!r}) is not read by task {self.task} (columns used: "
            f"{mapped}); {why}. Map it with the right *_key input, remove the rows it marks as unwanted, or "
            f"list it in drop_columns to drop it knowingly")

    def _strip_end_marker(self, text: str, field_name: str) -> str:
        """A target without a trailing end-of-text marker; a marker inside it is refused."""
        if "<" not in text:
            return text
        stripped = text.rstrip()
        changed = False
        while True:
            marker = next((m for m in END_MARKERS if stripped.endswith(m)), None)
            if marker is None:
                break
            stripped = stripped[: -len(marker)].rstrip()
            changed = True
        inside = next((m for m in END_MARKERS if m in stripped), None)
        if inside is not None:
            raise RowError("end_of_text_marker", field_name,
                           f"the target holds the end-of-text marker {inside!r} inside it; it would be learned as "
                           "text. Remove it (the chat template adds the model's own end token)")
        if changed:
            if not stripped.strip():
                raise RowError("missing_content", field_name, "the target is only an end-of-text marker")
            self.end_markers_stripped += 1
            return stripped
        return text

    def _extract_chat(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        col = columns["messages"]
        for legacy in ("functions", "function_call"):
            if row.get(legacy):
                raise RowError("unsupported_field", legacy,
                               f"the deprecated {legacy!r} field is not supported; give the definitions as tools "
                               "([{\"type\": \"function\", \"function\": {...}}]) and calls as tool_calls")
        tools = row.get("tools")
        if tools is not None:
            if tabular and isinstance(tools, str):
                tools = _structured(tools, "tools", tabular, list, "a list of tool definitions")
            tools = check_tools(tools, "tools")
        # An empty tools list (the docs' "tools": [] on a tool-result example) names nothing to check against.
        tool_names = {t["function"]["name"] for t in tools} if tools else None
        messages = row[col]
        if type(messages) is not list:
            messages = _structured(messages, col, tabular, list, "a list of messages")
        if not messages:
            raise RowError("missing_content", col, "the conversation has no messages")
        out = []
        has_user = has_assistant = learned = False
        call_ids: set[str] = set()
        style = self.chat_style
        for i, message in enumerate(messages):
            # The hot path: an OpenAI message {"role", "content"} of the dataset's style, plain string content.
            if type(message) is dict and style == "openai" and len(message) == 2:
                role = message.get("role")
                content = message.get("content")
                if (role == "user" or role == "assistant" or (role == "system" and i == 0)) \
                        and type(content) is str and content and not content.isspace():
                    if role == "user":
                        has_user = True
                    elif role == "assistant":
                        has_assistant = learned = True
                        if "<" in content:
                            content = self._strip_end_marker(content, f"{col}[{i}].content")
                    out.append({"role": role, "content": content})
                    continue
            clean = self._chat_message(message, i, col, tool_names, call_ids)
            style = self.chat_style
            role = clean["role"]
            has_user = has_user or role == "user"
            if role == "assistant":
                has_assistant = True
                learned = learned or clean.get("weight", 1) == 1
            out.append(clean)
        if not has_assistant:
            raise RowError("no_assistant_message", col, "the conversation has no assistant message")
        if not has_user:
            raise RowError("no_user_message", col, "the conversation has no user message")
        if out[-1]["role"] != "assistant":
            raise RowError("last_not_assistant", f"{col}[{len(out) - 1}]",
                           f"the last message is from the {out[-1]['role']}; it must be the assistant turn to learn")
        if not learned:
            raise RowError("no_learnable_turn", col,
                           "every assistant message has weight 0, so nothing would be learned; give at least one "
                           "weight 1 (or leave weight out)")
        if tools:
            self.uses_tools = True
            return {"messages": out, "tools": tools}
        return {"messages": out}

    def _chat_message(self, message: Any, i: int, col: str, tool_names: set[str] | None = None,
                      call_ids: set[str] | None = None) -> dict:
        """Check one message in full (the slow path) and return it cleaned, or raise RowError."""
        where = f"{col}[{i}]"
        if not isinstance(message, dict):
            raise RowError("wrong_type", where, f"expected a message object, got {_type_name(message)}")
        if "role" in message:
            style = "openai"
            role, content = message.get("role"), message.get("content")
            role_field, content_field = "role", "content"
            for key in message:
                if key not in OPENAI_MESSAGE_FIELDS:
                    raise RowError("unsupported_field", f"{where}.{key}",
                                   f"message field {key!r} is not supported (allowed: "
                                   f"{', '.join(OPENAI_MESSAGE_FIELDS)})")
        elif "from" in message:
            style = "sharegpt"
            raw_role, content = message.get("from"), message.get("value")
            role_field, content_field = "from", "value"
            role = SHAREGPT_ROLES.get(raw_role, raw_role) if isinstance(raw_role, str) else raw_role
            for key in message:
                if key not in ("from", "value", "name"):
                    raise RowError("unsupported_field", f"{where}.{key}",
                                   f"message field {key!r} is not supported (allowed: from, value, name)")
        else:
            raise RowError("missing_content", f"{where}.role",
                           f"the message has no role (keys found: {', '.join(message) or 'none'})")
        if self.chat_style is None:
            self.chat_style = style
        elif style != self.chat_style:
            raise RowError("mixed_schema", where,
                           f"{style} message ({role_field}/{content_field}) in a dataset of "
                           f"{self.chat_style} messages")
        if role not in CHAT_ROLES or (role == "tool" and style != "openai"):
            raise RowError("unknown_role", f"{where}.{role_field}",
                           f"unknown role {role!r} (expected system, user, assistant or tool)")
        tool_calls = None
        if message.get("tool_calls") is not None:
            if role != "assistant":
                raise RowError("unsupported_field", f"{where}.tool_calls",
                               f"only assistant messages make tool calls, not a {role} message")
            tool_calls = check_tool_calls(message["tool_calls"], where, tool_names,
                                          call_ids if call_ids is not None else set())
        if tool_calls is not None and (content is None or content == ""):
            content = ""  # a pure tool-call turn; templates read content as a string
        elif role == "tool" and isinstance(content, str):
            pass  # a tool's result may be any string, even empty
        else:
            if content is None:
                raise RowError("missing_content", f"{where}.{content_field}",
                               f"the {role} message has no content" if content_field not in message
                               else f"the {role} message's content is null")
            if not isinstance(content, str):
                content = self._content_parts(content, f"{where}.{content_field}")
            if not content.strip():
                raise RowError("missing_content", f"{where}.{content_field}", f"the {role} message is empty")
        if role == "system" and i != 0:
            raise RowError("misplaced_system", f"{where}.{role_field}",
                           f"a system message at position {i}; only the first message may be system")
        if role == "assistant" and content:
            content = self._strip_end_marker(content, f"{where}.{content_field}")
        clean = {"role": role, "content": content}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str):
                raise RowError("wrong_type", f"{where}.name", f"expected a string, got {_type_name(name)}")
            clean["name"] = name
        if "weight" in message:
            clean["weight"] = check_weight(message["weight"], where, role)
        if tool_calls is not None:
            clean["tool_calls"] = tool_calls
            self.uses_tools = True
        if role == "tool":
            clean["tool_call_id"] = check_tool_call_id(message.get("tool_call_id"), where,
                                                       call_ids if call_ids is not None else set())
            self.uses_tools = True
        elif "tool_call_id" in message:
            raise RowError("unsupported_field", f"{where}.tool_call_id",
                           f"tool_call_id belongs on tool messages, not on a {role} message")
        return clean

    @staticmethod
    def _content_parts(content: Any, where: str) -> str:
        """OpenAI content parts: text parts are joined; other parts are not supported."""
        if not isinstance(content, list):
            raise RowError("wrong_type", where, f"expected a string or text parts, got {_type_name(content)}")
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _type_name(part)
                raise RowError("unsupported_field", f"{where}[{j}]",
                               f"content part of type {kind!r} is not supported (text parts only)")
            texts.append(part["text"])
        return "".join(texts)

    def _extract_instruction(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        record = {"instruction": _text(row[columns["instruction"]], columns["instruction"])}
        extra = columns.get("input")
        value = row.get(extra) if extra else None
        if value is not None and not isinstance(value, str):
            raise RowError("wrong_type", extra, f"expected a string, got {_type_name(value)}")
        record["input"] = value or ""
        record["output"] = self._strip_end_marker(_text(row[columns["output"]], columns["output"]), columns["output"])
        return record

    def _label_name(self, value: Any, field_name: str) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise RowError("wrong_type", field_name, f"expected a string or integer label, got {_type_name(value)}")
        if self.label_names is None:
            label = str(value).strip()
            if not label:
                raise RowError("missing_content", field_name, "the label is empty")
            if type(value) is int or _INTEGER.match(label):
                what = "label" if self.task == "classification" else "tag"
                raise UserError(
                    f"{self._where}: field {field_name!r}: {what} {value!r} is an integer id and label_names is not "
                    f"set, so the model would learn to answer the number; give label_names, the "
                    f"{what} names in id order (e.g. label_names '"
                    + ("negative,positive" if self.task == "classification" else "O,B-PER,I-PER") + "')")
            return label
        if str(value) in self._label_index:  # a name, or a number that is itself one of the names (ratings 1..5)
            return str(value)
        index = value if isinstance(value, int) else (int(value) if value.strip().lstrip("-").isdigit() else None)
        if index is not None and 0 <= index < len(self.label_names):
            return self.label_names[index]
        raise RowError("unknown_label", field_name,
                       f"label {value!r} is neither one of label_names nor an id in 0..{len(self.label_names) - 1}")

    def _count_label(self, label: str) -> None:
        if label not in self.labels_seen and len(self.labels_seen) >= MAX_LABELS:
            raise RowError("unknown_label", None,
                           f"more than {MAX_LABELS} distinct labels; is the label column right? "
                           "Give label_names to fix the label set")
        self.labels_seen[label] = self.labels_seen.get(label, 0) + 1

    def _extract_classification(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        text = _text(row[columns["text"]], columns["text"])
        label = self._label_name(row[columns["label"]], columns["label"])
        self._count_label(label)
        where = self.label_rows.setdefault(label, [])
        if len(where) < 5:
            where.append(self._where)
        return {"text": text, "label": label}

    def _extract_ner(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        tcol, gcol = columns["tokens"], columns["tags"]
        tokens = _structured(row[tcol], tcol, tabular, list, "a list of tokens")
        tags = _structured(row[gcol], gcol, tabular, list, "a list of tags")
        if not tokens:
            raise RowError("missing_content", tcol, "the token list is empty")
        for i, token in enumerate(tokens):
            if not isinstance(token, str) or not token:
                raise RowError("wrong_type" if not isinstance(token, str) else "missing_content", f"{tcol}[{i}]",
                               f"expected a non-empty string token, got {token!r}")
        if len(tokens) != len(tags):
            raise RowError("length_mismatch", gcol, f"{len(tokens)} tokens but {len(tags)} tags")
        names = []
        for i, tag in enumerate(tags):
            if tabular and isinstance(tag, str) and tag.lstrip("-").isdigit() and self.label_names is not None:
                tag = int(tag)
            name = self._label_name(tag, f"{gcol}[{i}]")
            if name != "O" and not _TAG.match(name):
                raise RowError("invalid_tag", f"{gcol}[{i}]", f"tag {name!r} is not O, B-<type> or I-<type>")
            names.append(name)
        for name in set(names):
            self._count_label(name)
        return {"tokens": tokens, "tags": names}

    def _extract_translation(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        if "pair" in columns:
            col = columns["pair"]
            pair = _structured(row[col], col, tabular, dict, f"an object keyed by language code")
            for lang in (self.source_lang, self.target_lang):
                if lang not in pair:
                    raise RowError("missing_column", f"{col}.{lang}",
                                   f"no {lang!r} text (languages found: {', '.join(map(str, pair)) or 'none'}); "
                                   "set source_lang and target_lang to codes the data uses")
            target = _text(pair[self.target_lang], f"{col}.{self.target_lang}")
            return {"source": _text(pair[self.source_lang], f"{col}.{self.source_lang}"),
                    "target": self._strip_end_marker(target, f"{col}.{self.target_lang}")}
        return {"source": _text(row[columns["source"]], columns["source"]),
                "target": self._strip_end_marker(_text(row[columns["target"]], columns["target"]), columns["target"])}

    def _extract_qa(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        question = _text(row[columns["question"]], columns["question"])
        acol = columns["answers"]
        answers = row[acol]
        if "context" not in columns:  # closed book
            if isinstance(answers, str) and not (tabular and answers.strip()[:1] in ("[", "{")):
                return {"question": question, "answer": self._strip_end_marker(_text(answers, acol), acol)}
            if tabular and isinstance(answers, str):
                answers = _structured(answers, acol, tabular, object, "answers")
            texts = answers.get("text") if isinstance(answers, dict) else answers
            if not isinstance(texts, list):
                raise RowError("wrong_type", acol,
                               f"expected an answer string, a list of strings or {{text: [...]}}, got "
                               f"{_type_name(answers)}")
            if not texts:
                raise RowError("missing_content", acol, "no answer (unanswerable questions are not supported)")
            return {"question": question, "answer": _text(texts[0], f"{acol}[0]")}
        context = _text(row[columns["context"]], columns["context"])
        if tabular and isinstance(answers, str):
            answers = _structured(answers, acol, tabular, object, "answers")
        if isinstance(answers, list):  # SQuAD JSON: [{"text": ..., "answer_start": ...}, ...]
            if not all(isinstance(a, dict) for a in answers):
                raise RowError("wrong_type", acol, "expected a list of {text, answer_start} objects")
            texts = [a.get("text") for a in answers]
            starts = [a.get("answer_start") for a in answers]
        elif isinstance(answers, dict):  # Hugging Face squad: {"text": [...], "answer_start": [...]}
            texts, starts = answers.get("text"), answers.get("answer_start")
            if not isinstance(texts, list) or not isinstance(starts, list):
                raise RowError("wrong_type", acol, "expected {text: [...], answer_start: [...]} lists")
        else:
            raise RowError("wrong_type", acol, f"expected {{text, answer_start}}, got {_type_name(answers)}")
        if not texts:
            raise RowError("missing_content", f"{acol}.text", "no answer (unanswerable questions are not supported)")
        if len(texts) != len(starts):
            raise RowError("length_mismatch", acol, f"{len(texts)} answer texts but {len(starts)} answer_start values")
        for i, (text, start) in enumerate(zip(texts, starts)):
            text = _text(text, f"{acol}.text[{i}]")
            if isinstance(start, bool) or not isinstance(start, int):
                raise RowError("wrong_type", f"{acol}.answer_start[{i}]",
                               f"expected an integer, got {_type_name(start)}")
            found = context[start:start + len(text)] if start >= 0 else ""
            if found != text:
                raise RowError("answer_span_mismatch", f"{acol}.answer_start[{i}]",
                               f"answer {text[:60]!r} is not in the context at {start} "
                               f"(the context there reads {found[:60]!r})")
        return {"context": context, "question": question, "answer": texts[0]}

    def _extract_summarization(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        return {"document": _text(row[columns["document"]], columns["document"]),
                "summary": self._strip_end_marker(_text(row[columns["summary"]], columns["summary"]),
                                                  columns["summary"])}

    def _extract_preference(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        from maap_finetune.data.preference import extract_preference

        return extract_preference(self, row, columns, tabular)

    def _extract_rft(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        from maap_finetune.data.rft import extract_rft

        return extract_rft(self, row, columns, tabular)

    def _extract_text(self, row: dict, columns: dict[str, str], tabular: bool) -> dict:
        return {"text": _text(row[columns["text"]], columns["text"])}

    # ----- label set --------------------------------------------------------------------------
    def label_set(self) -> list[str] | None:
        if self.task not in ("classification", "ner"):
            return None
        if self.label_names is not None:
            return list(self.label_names)
        labels = list(self.labels_seen)
        if all(label.lstrip("-").isdigit() for label in labels):
            return sorted(labels, key=int)
        if self.task == "ner":  # O first, then by entity type, B before I
            return sorted(labels, key=lambda t: (t != "O", t[2:], t[:1]))
        return sorted(labels)

    def entity_types(self) -> list[str]:
        types = []
        for tag in self.label_set() or []:
            match = _TAG.match(tag)
            if match and match.group(2) not in types:
                types.append(match.group(2))
        return types

    # ----- rendering --------------------------------------------------------------------------
    def prepare_render(self) -> None:
        """Freeze what rendering needs once every row has been read."""
        labels = self.label_set() or []
        self._labels_text = ", ".join(labels)
        self._entity_types_text = ", ".join(self.entity_types())
        system = self.templates.get("system")
        self._system = [{"role": "system", "content": system}] if system else []

    def render(self, record: dict) -> dict:
        """The output row of the contract for one record."""
        task, t = self.task, self.templates
        if task in ("text", "preference"):  # preference: the system prompt is added at extraction
            return record
        if task in ("chat", "rft"):
            messages = record["messages"]
            if self.system_prompt and messages[0]["role"] != "system":
                return {**record, "messages": [{"role": "system", "content": self.system_prompt}, *messages]}
            return record
        if task == "instruction":
            key = "prompt_with_input" if record["input"] else "prompt"
            prompt = t[key].format(instruction=record["instruction"], input=record["input"])
            completion = t["completion"].format(output=record["output"])
        elif task == "classification":
            prompt = t["prompt"].format(text=record["text"], labels=self._labels_text)
            completion = t["completion"].format(label=record["label"])
        elif task == "ner":
            prompt = t["prompt"].format(text=" ".join(record["tokens"]), entity_types=self._entity_types_text)
            entities = [t["entity"].format(type=kind, text=text) for kind, text in ner_entities(record)]
            joined = t["entity_separator"].join(entities) if entities else t["no_entities"]
            completion = t["completion"].format(entities=joined)
        elif task == "translation":
            prompt = t["prompt"].format(source=record["source"], source_lang=self.source_lang,
                                        target_lang=self.target_lang)
            completion = t["completion"].format(target=record["target"])
        elif task == "qa":
            if "context" in record:
                prompt = t["prompt"].format(context=record["context"], question=record["question"])
            else:
                prompt = t["prompt_closed_book"].format(question=record["question"])
            completion = t["completion"].format(answer=record["answer"])
        elif task == "summarization":
            prompt = t["prompt"].format(document=record["document"])
            completion = t["completion"].format(summary=record["summary"])
        else:  # pragma: no cover
            raise ValueError(task)
        return {"messages": [*self._system, {"role": "user", "content": prompt},
                             {"role": "assistant", "content": completion}]}


def ner_entities(record: dict) -> list[tuple[str, str]]:
    """(type, text) of each entity in BIO tags; an I- tag without a matching entity starts one."""
    entities: list[tuple[str, list[str]]] = []
    current: str | None = None
    for token, tag in zip(record["tokens"], record["tags"]):
        match = _TAG.match(tag)
        if match is None:
            current = None
            continue
        prefix, kind = match.groups()
        if prefix == "I" and current == kind:
            entities[-1][1].append(token)
        else:
            entities.append((kind, [token]))
            current = kind
    return [(kind, " ".join(tokens)) for kind, tokens in entities]

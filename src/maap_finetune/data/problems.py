"""Problems found while reading and validating data: each names file, line, field and reason.

Every problem is counted; only the first few examples of each kind are kept, so memory stays
bounded however many rows are bad.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

# Each kind of problem and what it means; the data report and the error summary use these names.
KINDS: dict[str, str] = {
    "invalid_json": "the line or item is not valid JSON",
    "not_utf8": "the bytes are not valid UTF-8",
    "wrong_type": "a field has the wrong type (or the row is not an object)",
    "malformed_row": "a CSV/TSV row has a different number of fields than the header",
    "missing_column": "a column the task needs is absent",
    "mixed_schema": "the row has a different layout than earlier rows of the dataset",
    "missing_content": "a required value is missing, null or empty",
    "unknown_role": "a chat message has a role other than system, user, assistant or tool",
    "unsupported_field": "a field this pipeline cannot train on (legacy functions/function_call, non-text parts)",
    "invalid_weight": "an assistant message's weight is not 0 or 1 (or the message is not an assistant's)",
    "no_learnable_turn": "every assistant message of the conversation has weight 0",
    "invalid_tool": "a tool definition that is not {type: function, function: {name, ...}}",
    "unknown_tool": "a tool call names a function that is not in the row's tools",
    "invalid_arguments": "a tool call's arguments are not a JSON string of an object",
    "unknown_tool_call_id": "a tool message whose tool_call_id matches no earlier tool call",
    "misplaced_system": "a system message that is not the first message",
    "no_user_message": "a conversation without a user message",
    "no_assistant_message": "a conversation without an assistant message",
    "last_not_assistant": "a conversation whose last message is not the assistant turn to learn",
    "unknown_label": "a label or tag that is not in label_names (or an id out of its range)",
    "invalid_tag": "an NER tag that is not O, B-<type> or I-<type>",
    "length_mismatch": "tokens and tags have different lengths",
    "answer_span_mismatch": "an answer's text is not found in the context at its answer_start",
    "prompt_not_user": "a preference prompt that does not end with a user turn (or chosen/rejected share no prompt)",
    "completion_role": "a chosen or rejected answer holding a message that is not the assistant's",
    "identical_pair": "a preference pair whose chosen and rejected answers are identical",
    "unreadable_file": "a file that cannot be read at all",
    "nul_character": "a text holding a NUL character (\\u0000), which no dataset means",
    "last_not_user": "an rft prompt whose last message is not the user turn the model answers",
    "missing_field": "a field that a grader's {{item.*}} template reads is missing from the row",
    "end_of_text_marker": "an end-of-text marker (such as <|endoftext|>) inside a target, where it would be learned as text",
}
# An input with no rows at all is not a row problem: Data Prep stops with a UserError naming it.


class RowError(Exception):
    """One problem in one row, raised by a task's validator."""

    def __init__(self, kind: str, field: str | None, reason: str):
        super().__init__(reason)
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.kind = kind
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None  # line of a JSONL/CSV file, or the 1-based row/item number of JSON/Parquet
    field: str | None
    kind: str
    reason: str

    def describe(self) -> str:
        where = self.file + (f" line {self.line}" if self.line is not None else "")
        field = f" field {self.field!r}:" if self.field else ""
        return f"{where}:{field} {self.reason}"


class Problems:
    """Counts per kind (and per input), plus the first `examples_per_kind` examples of each."""

    def __init__(self, examples_per_kind: int = 5):
        self.examples_per_kind = examples_per_kind
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[Problem]] = {}

    def add(self, file: str, line: int | None, field: str | None, kind: str, reason: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown problem kind {kind!r}")
        self.counts[kind] += 1
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < self.examples_per_kind:
            bucket.append(Problem(file, line, field, kind, reason))

    def add_row_error(self, file: str, line: int | None, err: RowError) -> None:
        self.add(file, line, err.field, err.kind, err.reason)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __bool__(self) -> bool:
        return self.total > 0

    def as_dict(self) -> dict:
        return {
            "total": self.total,
            "by_kind": dict(sorted(self.counts.items())),
            "examples": {k: [asdict(p) for p in v] for k, v in sorted(self.examples.items())},
        }

    def summary(self, shown: int = 3) -> str:
        """A human summary: each kind with its count, meaning and first examples."""
        lines = []
        for kind, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(f"  {kind}: {count} ({KINDS[kind]})")
            for problem in self.examples.get(kind, [])[:shown]:
                lines.append(f"      {problem.describe()}")
        return "\n".join(lines)

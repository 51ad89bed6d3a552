"""Prompt-side truncation: a row longer than `max_seq_length` keeps its target and loses prompt text.

Fine-Tune cuts a too-long sequence at its end, which is where the answer is: the target is lost, or
the row is dropped. For summarization, QA and long conversations it is the prompt that should give
way. As LLaMA-Factory's `infer_seqlen` does (its data processors), the target is kept whole when it
takes less than half of `max_seq_length`, and the source is cut to what is left:

- summarization: the end of the document; classification: the end of the text; instruction: the
  end of the Alpaca input;
- extractive QA: the context, to a window that still holds the answer;
- chat: the oldest turns (from the first user message on; the system message stays), whole turns at
  a time, so tool calls keep their results.

Translation, NER and closed-book QA are never cut (the target depends on all of the source). A row
whose target is too long, or that is still too long with nothing left to cut, is left as it is and
counted as too long.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The field of each task's record that may be shortened.
CUT_FIELDS = {"summarization": "document", "qa": "context", "classification": "text", "instruction": "input"}
_ATTEMPTS = 4


@dataclass
class Shortened:
    row: dict
    tokens: int  # the row's length after shortening


class PromptTruncator:
    """Shortens the prompt of over-long rendered rows, counting lengths with `counter` (a TokenCounter)."""

    def __init__(self, adapter: Any, counter: Any, max_seq_length: int):
        self.adapter = adapter
        self.counter = counter
        self.tokenizer = counter.tokenizer
        self.max_seq_length = max_seq_length

    def target_tokens(self, row: dict) -> int:
        """Tokens of the last assistant turn as the chat template renders it (the row minus its prompt)."""
        tok, messages = self.tokenizer, row["messages"]
        if self.counter.has_template:
            prompt = tok.apply_chat_template(messages[:-1], tools=row.get("tools"), tokenize=False,
                                             add_generation_prompt=True)
            return self.counter.count([row])[0] - len(tok(prompt, add_special_tokens=False)["input_ids"])
        return len(tok(messages[-1]["content"], add_special_tokens=False)["input_ids"])

    def shorten(self, record: dict, row: dict, length: int) -> Shortened | None:
        """The row with a shorter prompt that fits, or None when the target cannot be kept whole."""
        if self.target_tokens(row) * 2 >= self.max_seq_length:
            return None  # LLaMA-Factory would cut the target too; here the row stays and is counted
        if self.adapter.task == "chat":
            return self._drop_turns(record)
        name = CUT_FIELDS.get(self.adapter.task)
        text = record.get(name) if name else None
        if not text:
            return None
        anchor = record.get("answer") if self.adapter.task == "qa" else None
        offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        keep = len(offsets) - (length - self.max_seq_length)
        for _ in range(_ATTEMPTS):
            if keep <= 0:
                return None
            cut = _window(text, offsets, keep, anchor)
            if cut is None:
                return None
            candidate = self.adapter.render({**record, name: cut})
            tokens = self.counter.count([candidate])[0]
            if tokens <= self.max_seq_length:
                return Shortened(candidate, tokens)
            keep -= tokens - self.max_seq_length  # token boundaries moved: cut the excess again
        return None

    def _drop_turns(self, record: dict) -> Shortened | None:
        messages = record["messages"]
        head = messages[:1] if messages[0]["role"] == "system" else []
        body = messages[len(head):]
        starts = [i for i, m in enumerate(body) if m["role"] == "user"][1:]  # turn boundaries after the first
        for start in starts:
            rest = body[start:]
            if not any(m["role"] == "assistant" and m.get("weight", 1) == 1 for m in rest):
                return None
            candidate = self.adapter.render({**record, "messages": head + rest})
            tokens = self.counter.count([candidate])[0]
            if tokens <= self.max_seq_length:
                return Shortened(candidate, tokens)
        return None


def _window(text: str, offsets: list, keep: int, anchor: str | None) -> str | None:
    """`keep` tokens of `text`: its start, or (with an anchor, the QA answer) a window holding the anchor."""
    if keep >= len(offsets):
        return text
    if anchor is None:
        return text[: offsets[keep - 1][1]]
    at = text.find(anchor)
    if at < 0:
        return None
    end_char = at + len(anchor)
    first = next(i for i, (s, e) in enumerate(offsets) if e > at)
    last = next((i for i, (s, e) in enumerate(offsets) if e >= end_char), len(offsets) - 1)
    if last - first + 1 > keep:
        return None
    start = max(0, min(first - (keep - (last - first + 1)) // 2, len(offsets) - keep))
    return text[offsets[start][0]: offsets[start + keep - 1][1]]

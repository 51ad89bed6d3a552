"""Turn prepared rows into token ids and labels, with the loss on assistant tokens only.

TRL's own `assistant_only_loss` needs `{% generation %}` markers in the chat template, which most
released templates (Phi-3's included) lack. So the mask is computed here from the rendered text, for
any template: the characters between "the conversation up to this assistant turn, with the
generation prompt" and "the conversation including this turn" are the assistant's, and a token is
learned when it lies inside such a span. The end-of-turn token (`<|end|>`) and, on the last turn,
the EOS the template appends, fall inside the span. The result goes to SFTTrainer as a
pre-tokenized dataset (`input_ids`, `labels`), so TRL does no second tokenization.

Rows in the Azure OpenAI format: an assistant message with `"weight": 0` is context, not learned;
every other assistant turn is (tool-call turns included). A row's `tools` go to the template.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from maap_finetune.common.errors import UserError

log = logging.getLogger(__name__)

IGNORE_INDEX = -100

# For base models that ship no chat template: Phi-3-style role markers, each turn closed by EOS so
# generation stops. Saved with the fine-tuned model's tokenizer.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class TokenizeStats:
    rows: int = 0
    truncated: int = 0
    dropped_no_target: int = 0  # truncation left no learnable token (a prompt longer than max_seq_length)
    tokens: int = 0
    target_tokens: int = 0
    dropped_rows: list[int] = field(default_factory=list)


def ensure_chat_template(tokenizer) -> bool:
    """Give `tokenizer` the default template when it has none; return True when it was added."""
    if getattr(tokenizer, "chat_template", None):
        return False
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return True


def _render(tokenizer, messages: Sequence[dict], add_generation_prompt: bool, tools: list | None = None) -> str:
    return tokenizer.apply_chat_template(
        list(messages), tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def assistant_spans(
    tokenizer, messages: Sequence[dict], tools: list | None = None, weight: int = 1
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return the text and the character spans of every assistant turn of `weight`:
    1 (absent counts as 1) for the turns learned, 0 for those kept as context only."""
    full = _render(tokenizer, messages, add_generation_prompt=False, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) != weight:
            continue
        prompt = _render(tokenizer, messages[:i], add_generation_prompt=True, tools=tools) if i else ""
        if not full.startswith(prompt):
            raise UserError(
                "the chat template renders a conversation differently from its own prefix (the turns before an "
                "assistant message plus the generation prompt), so assistant tokens cannot be located; "
                "use a prefix-preserving template, or set train_on_prompt true (and drop weight 0 from the rows: "
                "its turns must be located too)"
            )
        if i == len(messages) - 1:
            end = len(full)  # the last turn owns everything the template appends (end-of-turn, EOS)
        else:
            end = _common_prefix(_render(tokenizer, messages[: i + 1], add_generation_prompt=False, tools=tools), full)
        spans.append((len(prompt), end))
    return full, spans


def tokenize_messages(
    tokenizer, messages: Sequence[dict], train_on_prompt: bool, tools: list | None = None
) -> tuple[list[int], list[int]]:
    """Token ids and labels: assistant turns learned, the rest -100; with `train_on_prompt` every token is
    learned except the assistant turns of weight 0, which the data marks as context in either mode."""
    if train_on_prompt:
        text, excluded = assistant_spans(tokenizer, messages, tools, weight=0) if _has_weight_zero(messages) else (
            _render(tokenizer, messages, add_generation_prompt=False, tools=tools), [])
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = encoded["input_ids"]
        return ids, [IGNORE_INDEX if _inside(offsets, excluded) else token_id
                     for token_id, offsets in zip(ids, encoded["offset_mapping"])]
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    return ids, [token_id if _inside(offsets, spans) else IGNORE_INDEX
                 for token_id, offsets in zip(ids, encoded["offset_mapping"])]


def _has_weight_zero(messages: Sequence[dict]) -> bool:
    return any(m.get("role") == "assistant" and m.get("weight", 1) == 0 for m in messages)


def _inside(offsets: tuple[int, int], spans: list[tuple[int, int]]) -> bool:
    start, end = offsets
    return any(s <= start < e and end <= e for s, e in spans)


def tokenize_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids, list(ids)


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str, train_on_prompt: bool):
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
        full_ids = full_ids + [tokenizer.eos_token_id]
    cut = _common_prefix_ids(prompt_ids, full_ids)
    labels = list(full_ids) if train_on_prompt else [IGNORE_INDEX] * cut + full_ids[cut:]
    return full_ids, labels


def _common_prefix_ids(a: list[int], b: list[int]) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def tokenize_row(tokenizer, row: dict[str, Any], train_on_prompt: bool) -> tuple[list[int], list[int]]:
    if "messages" in row:
        return tokenize_messages(tokenizer, row["messages"], train_on_prompt, row.get("tools"))
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list) and isinstance(completion, list):
            return tokenize_messages(tokenizer, prompt + completion, train_on_prompt)
        return tokenize_prompt_completion(tokenizer, str(prompt), str(completion), train_on_prompt)
    if "text" in row:
        return tokenize_text(tokenizer, row["text"])
    raise UserError(f"a prepared row has none of messages, prompt/completion or text (keys: {sorted(row)})")


def tokenize_rows(
    tokenizer, rows: Iterable[dict[str, Any]], max_seq_length: int, train_on_prompt: bool, split: str
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenize every row, truncate to `max_seq_length` (keeping the start) and count what happened."""
    stats = TokenizeStats()
    examples = []
    for index, row in enumerate(rows):
        stats.rows += 1
        ids, labels = tokenize_row(tokenizer, row, train_on_prompt)
        if len(ids) > max_seq_length:
            stats.truncated += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(label == IGNORE_INDEX for label in labels):
            stats.dropped_no_target += 1
            stats.dropped_rows.append(index + 1)
            continue
        stats.tokens += len(ids)
        stats.target_tokens += sum(label != IGNORE_INDEX for label in labels)
        examples.append({"input_ids": ids, "labels": labels, "length": len(ids)})
    if stats.truncated:
        log.warning(
            "%s: %d of %d examples were longer than max_seq_length %d and were truncated",
            split, stats.truncated, stats.rows, max_seq_length,
        )
    if stats.dropped_no_target:
        shown = ", ".join(map(str, stats.dropped_rows[:10]))
        log.warning(
            "%s: %d examples kept no assistant token after truncation and are left out (rows %s%s); "
            "raise max_seq_length to keep them",
            split, stats.dropped_no_target, shown, " ..." if stats.dropped_no_target > 10 else "",
        )
    return examples, stats


def target_token_loss(model_dir: str, rows: Iterable[dict[str, Any]], max_seq_length: int, split: str) -> float:
    """Mean loss over the learnable (assistant/completion) tokens of `rows`, tokenized as training does.

    The yardstick the fine-tune tests and `benchmarks/finetune_throughput.py` compare models with.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.models.source import resolve_model_source

    source = resolve_model_source(model_dir, None)
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
    model = AutoModelForCausalLM.from_pretrained(source.model).eval()
    examples, _ = tokenize_rows(tokenizer, rows, max_seq_length, False, split)
    total = count = 0.0
    with torch.no_grad():
        for example in examples:
            out = model(input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]]))
            n = sum(label != IGNORE_INDEX for label in example["labels"][1:])
            total, count = total + out.loss.item() * n, count + n
    return total / count

"""The batched tokenizer (`training.data`) gives the same ids, labels, truncation and counts as the
row-by-row algorithm it replaced, kept here as the reference, on random conversations: multi-turn,
system prompts, tool calls and results, weight-0 turns, train_on_prompt both ways, special-token
text and non-ASCII content, truncation, three templates, and text / prompt-completion rows mixed in."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

import pytest

from maap_finetune.common.errors import UserError
from maap_finetune.training.chat_spans import _common_prefix
from maap_finetune.training.data import DEFAULT_CHAT_TEMPLATE, IGNORE_INDEX, rust_threads, tokenize_rows

# ---- the reference: the row-by-row algorithm as it was (two renders per turn, a character loop) ----


def _ref_render(tokenizer, messages, add_generation_prompt, tools=None):
    return tokenizer.apply_chat_template(
        list(messages), tools=tools or None, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _ref_common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _ref_spans(tokenizer, messages: Sequence[dict], tools=None, weight=1):
    full = _ref_render(tokenizer, messages, False, tools)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant" or message.get("weight", 1) != weight:
            continue
        prompt = _ref_render(tokenizer, messages[:i], True, tools) if i else ""
        if not full.startswith(prompt):
            raise UserError("prefix")
        end = len(full) if i == len(messages) - 1 else _ref_common_prefix(
            _ref_render(tokenizer, messages[: i + 1], False, tools), full)
        spans.append((len(prompt), end))
    return full, spans


def _ref_inside(offsets, spans):
    start, end = offsets
    return any(s <= start < e and end <= e for s, e in spans)


def _ref_messages(tokenizer, messages, train_on_prompt, tools=None):
    has_zero = any(m.get("role") == "assistant" and m.get("weight", 1) == 0 for m in messages)
    if train_on_prompt:
        text, excluded = _ref_spans(tokenizer, messages, tools, 0) if has_zero else (
            _ref_render(tokenizer, messages, False, tools), [])
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [IGNORE_INDEX if _ref_inside(o, excluded) else t
                                  for t, o in zip(enc["input_ids"], enc["offset_mapping"])]
    text, spans = _ref_spans(tokenizer, messages, tools)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], [t if _ref_inside(o, spans) else IGNORE_INDEX
                              for t, o in zip(enc["input_ids"], enc["offset_mapping"])]


def _ref_row(tokenizer, row, train_on_prompt):
    eos = tokenizer.eos_token_id
    if "messages" in row:
        return _ref_messages(tokenizer, row["messages"], train_on_prompt, row.get("tools"))
    if isinstance(row.get("prompt"), list):
        return _ref_messages(tokenizer, row["prompt"] + row["completion"], train_on_prompt)
    if "prompt" in row:
        prompt_ids = tokenizer(row["prompt"], add_special_tokens=True)["input_ids"]
        full = tokenizer(row["prompt"] + row["completion"], add_special_tokens=True)["input_ids"]
        full = full if full and full[-1] == eos else full + [eos]
        cut = _ref_common_prefix(prompt_ids, full)
        return full, list(full) if train_on_prompt else [IGNORE_INDEX] * cut + full[cut:]
    ids = tokenizer(row["text"], add_special_tokens=True)["input_ids"]
    ids = ids if ids and ids[-1] == eos else ids + [eos]
    return ids, list(ids)


def _ref_rows(tokenizer, rows, max_seq_length, train_on_prompt, encoded=None):
    examples, counts = [], {"truncated": 0, "dropped": [], "tokens": 0, "target_tokens": 0}
    for index, row in enumerate(rows):
        ids, labels = encoded[index] if encoded else _ref_row(tokenizer, row, train_on_prompt)
        if len(ids) > max_seq_length:
            counts["truncated"] += 1
            ids, labels = ids[:max_seq_length], labels[:max_seq_length]
        if all(label == IGNORE_INDEX for label in labels):
            counts["dropped"].append(index + 1)
            continue
        counts["tokens"] += len(ids)
        counts["target_tokens"] += sum(label != IGNORE_INDEX for label in labels)
        examples.append({"input_ids": list(ids), "labels": list(labels), "length": len(ids)})
    return examples, counts


# ---- random conversations ----

WORDS = ("bike wheel price brake chain tire shop order délivery größe 自転車 🚲 naïve "
         "<|end|> <|assistant|> <|endoftext|> \n  {json} [list] \"quoted\"").split(" ")
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
OTHER_TOOLS = [{"type": "function", "function": {"name": "get_price", "description": "A price",
                                                 "parameters": {"type": "object", "properties": {}}}}]


def _text(rng: random.Random, at_least: int = 0) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(at_least, 30)))


def _conversation(rng: random.Random, with_tools: bool) -> dict:
    messages = []
    if rng.random() < 0.4:
        messages.append({"role": "system", "content": _text(rng, 1)})
    for turn in range(rng.choice((1, 1, 2, 3, 5, 8))):
        messages.append({"role": "user", "content": _text(rng, 1)})
        if with_tools and rng.random() < 0.4:
            city = rng.choice(("Oslo", "Köln", "東京"))
            messages.append({"role": "assistant", "content": "", "tool_calls": [{
                "id": f"call_{turn}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}]})
            messages.append({"role": "tool", "tool_call_id": f"call_{turn}", "content": _text(rng, 1)})
        answer = {"role": "assistant", "content": _text(rng)}
        if rng.random() < 0.3:
            answer["weight"] = rng.choice((0, 0, 1))
        messages.append(answer)
    row = {"messages": messages}
    if with_tools and rng.random() < 0.7:
        row["tools"] = rng.choice((TOOLS, OTHER_TOOLS))
    return row


def _rows(rng: random.Random, n: int, with_tools: bool) -> list[dict]:
    rows = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.85:
            rows.append(_conversation(rng, with_tools))
        elif kind < 0.9:
            chat = _conversation(rng, False)["messages"]
            rows.append({"prompt": chat[:-1], "completion": chat[-1:]})
        elif kind < 0.95:
            rows.append({"prompt": _text(rng, 1), "completion": " " + _text(rng, 1)})
        else:
            rows.append({"text": _text(rng, 1)})
    return rows


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("template", ["tiny", "phi3", "default"])
@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_batched_tokenizer_equals_the_row_by_row_reference(tokenizer, template, train_on_prompt):
    from trl.chat_template_utils import phi3_chat_template

    original = tokenizer.chat_template
    tokenizer.chat_template = {"tiny": original, "phi3": phi3_chat_template, "default": DEFAULT_CHAT_TEMPLATE}[template]
    try:
        rng = random.Random(f"{template}-{train_on_prompt}")
        rows = _rows(rng, 200, with_tools=template == "tiny")  # only the tiny template renders tools
        reference = [_ref_row(tokenizer, row, train_on_prompt) for row in rows]
        for max_seq_length in (16, 64, 100_000):
            examples, stats = tokenize_rows(tokenizer, rows, max_seq_length, train_on_prompt, "train")
            expected, counts = _ref_rows(tokenizer, rows, max_seq_length, train_on_prompt, reference)
            assert examples == expected
            assert (stats.rows, stats.truncated, stats.dropped_rows, stats.tokens, stats.target_tokens) == (
                len(rows), counts["truncated"], counts["dropped"], counts["tokens"], counts["target_tokens"])
        assert counts["truncated"] == 0 and 0 < stats.target_tokens < stats.tokens  # the masks were not trivial
    finally:
        tokenizer.chat_template = original


def test_the_rust_tokenizers_threads_give_the_same_examples_in_order(tokenizer, monkeypatch):
    rows = _rows(random.Random(7), 1200, with_tools=True)  # three batches of BATCH_ROWS
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert tokenize_rows(tokenizer, rows, 64, False, "train", parallel=True) == tokenize_rows(tokenizer, rows, 64, False, "train")
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"  # switched on for each batch's call only


@pytest.mark.parametrize("before", [None, "false", "0"])
def test_rust_threads_is_on_inside_the_block_and_as_before_after(before, monkeypatch):
    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    with rust_threads(True):
        assert os.environ["TOKENIZERS_PARALLELISM"] == "true"
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
    with rust_threads(False):
        assert os.environ.get("TOKENIZERS_PARALLELISM") == before


def test_a_template_that_is_not_prefix_preserving_is_refused_as_before(tokenizer):
    tokenizer.chat_template, original = (
        "{% for m in messages %}{{ m['role'] + ':' + m['content'] + '|' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant says:' }}{% endif %}"), tokenizer.chat_template
    try:
        row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
        with pytest.raises(UserError):
            _ref_rows(tokenizer, [row], 512, False)
        with pytest.raises(UserError, match="prefix-preserving template"):
            tokenize_rows(tokenizer, [row], 512, False, "train")
    finally:
        tokenizer.chat_template = original


def test_common_prefix_by_bisection():
    rng = random.Random(0)
    for _ in range(2000):
        a = "".join(rng.choice("ab") for _ in range(rng.randint(0, 12)))
        b = "".join(rng.choice("ab") for _ in range(rng.randint(0, 12)))
        assert _common_prefix(a, b) == _ref_common_prefix(a, b)


class _WithoutRustBackend:
    """The same tokenizer as a Python one looks (no `backend_tokenizer`), so the mask comes from the offsets."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer

    def __getattr__(self, name):
        if name == "backend_tokenizer":
            raise AttributeError(name)
        return getattr(self._tokenizer, name)

    def __call__(self, *args, **kwargs):
        return self._tokenizer(*args, **kwargs)


@pytest.mark.parametrize("train_on_prompt", [False, True])
def test_span_bisection_over_the_encoding_equals_the_offsets_mask(tokenizer, train_on_prompt):
    rows = _rows(random.Random(f"bisect-{train_on_prompt}"), 300, with_tools=True)
    bisected, _ = tokenize_rows(tokenizer, rows, 100_000, train_on_prompt, "train")
    by_offsets, _ = tokenize_rows(_WithoutRustBackend(tokenizer), rows, 100_000, train_on_prompt, "train")
    assert bisected == by_offsets
    assert any(IGNORE_INDEX in e["labels"] for e in bisected) and any(
        label != IGNORE_INDEX for e in bisected for label in e["labels"])

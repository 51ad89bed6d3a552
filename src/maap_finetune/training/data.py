"""Turn prepared rows into token ids and labels, with the loss on assistant tokens only.

TRL's own `assistant_only_loss` needs `{% generation %}` markers in the chat template, which most
released templates (Phi-3's included) lack. So the mask is computed here from the rendered text, for
any template: the characters between "the conversation up to this assistant turn, with the
generation prompt" and "the conversation including this turn" are the assistant's, and a token is
learned when it lies inside such a span. The end-of-turn token (`<|end|>`) and, on the last turn,
the EOS the template appends, fall inside the span. The result goes to SFTTrainer as a
pre-tokenized dataset (`input_ids`, `labels`), so TRL does no second tokenization.

Rendering those prefixes for every turn costs the square of the turns, so `training.chat_spans` renders each
message alone instead where the template is piecewise (nearly all released ones are: a prefix's render is the
first message, each later message's own piece, then a tail such as the generation prompt). A probe of every
prefix of a few conversations decides that once per template and tools, each row's whole render must equal its
pieces joined, and any template or row that fails takes the prefix renders above (the exact method). Both give
the same spans wherever the template renders the row's prefixes piecewise; the probe and the row check test that
(no check short of the prefix renders proves it for every Jinja template), and
tests/finetune/test_tokenize_piecewise.py compares the two methods on five templates.

Rows go in batches of BATCH_ROWS: every render of a batch is one `apply_chat_template` call, every text one
tokenizer call (the Rust tokenizer encodes a batch at once), and each span's first and last token are found by
bisection over the Rust Encoding (`token_to_chars`), so no token's offsets become Python objects;
`iter_tokenized(parallel=True)` lets the Rust tokenizer encode each batch on every core (its own threads,
switched on for that call only). The ids, labels and counts equal the row-by-row algorithm's
(tests/finetune/test_tokenize_equivalence.py keeps it as the reference).

Rows in the Azure OpenAI format: an assistant message with `"weight": 0` is context, not learned;
every other assistant turn is (tool-call turns included). A row's `tools` go to the template.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from typing import Any

import numpy as np

from maap_finetune.common.errors import UserError
from maap_finetune.training.chat_spans import spans_of_chats

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


def assistant_spans(
    tokenizer, messages: Sequence[dict], tools: list | None = None, weight: int = 1
) -> tuple[str, list[tuple[int, int]]]:
    """Render `messages` and return the text and the character spans of every assistant turn of `weight`:
    1 (absent counts as 1) for the turns learned, 0 for those kept as context only."""
    return spans_of_chats(tokenizer, [(messages, tools)], weight)[0]


def _encode_chats(tokenizer, chats, train_on_prompt: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """Token ids and labels of many conversations: one batched render, one batched (Rust) tokenizer call, and
    the mask from each span's two boundary tokens. A token is inside a span (s, e) when s <= start < e and
    end <= e; learned inside learned turns, or, with `train_on_prompt`, everywhere but weight-0 turns."""
    rendered = spans_of_chats(tokenizer, chats, weight=0 if train_on_prompt else 1)
    texts = [text for text, _ in rendered]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: no Encoding objects, so the mask comes from the offsets
        return _encode_by_offsets(tokenizer, rendered, train_on_prompt)
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    lengths = [len(encoding) for encoding in encodings]
    bounds = np.concatenate(([0], np.cumsum(lengths, dtype=np.int64))).tolist()
    ids = np.fromiter(chain.from_iterable(encoding.ids for encoding in encodings), dtype=np.int64, count=bounds[-1])
    inside = np.zeros(len(ids), dtype=bool)
    for encoding, n, offset, (_, spans) in zip(encodings, lengths, bounds, rendered):
        for s, e in spans:
            first, stop = _tokens_within(encoding, n, s, e)
            inside[offset + first:offset + stop] = True
    labels = np.where(inside != train_on_prompt, ids, IGNORE_INDEX)
    return [(ids[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _tokens_within(encoding, n: int, s: int, e: int) -> tuple[int, int]:
    """[first, stop): the tokens with s <= start < e and end <= e. Token offsets never go backwards, so those
    tokens are contiguous: found by bisection over `token_to_chars` (a few Rust calls, no offsets list)."""
    if e <= s:
        return 0, 0

    def first_where(key) -> int:  # smallest i with key(i) true, for a key false then true along the tokens
        lo, hi = 0, n
        while lo < hi:
            mid = (lo + hi) // 2
            if key(mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    chars = encoding.token_to_chars
    first = first_where(lambda i: chars(i)[0] >= s)
    stop = first_where(lambda i: chars(i)[1] > e or chars(i)[0] >= e)
    return first, max(first, stop)


def _encode_by_offsets(tokenizer, rendered, train_on_prompt: bool) -> list[tuple[np.ndarray, np.ndarray]]:
    """The mask from numpy over every token's offsets (for tokenizers without a Rust backend)."""
    texts = [text for text, _ in rendered]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False,
                        return_token_type_ids=False)
    ids_per_row, offsets_per_row = encoded["input_ids"], encoded["offset_mapping"]
    lengths = np.fromiter(map(len, ids_per_row), dtype=np.int64, count=len(texts))
    total = int(lengths.sum())
    ids = np.fromiter(chain.from_iterable(ids_per_row), dtype=np.int64, count=total)
    offsets = np.fromiter(chain.from_iterable(chain.from_iterable(offsets_per_row)), dtype=np.int64, count=2 * total)
    # One line of text for the whole batch: row r starts at base[r], one character past the end of row r - 1,
    # so no span of one row can reach a token of another.
    base = np.zeros(len(texts), dtype=np.int64)
    np.cumsum(np.fromiter((len(t) + 1 for t in texts), dtype=np.int64, count=len(texts))[:-1], out=base[1:])
    token_base = np.repeat(base, lengths)
    starts, ends = offsets[0::2] + token_base, offsets[1::2] + token_base
    spans = np.array([(b + s, b + e) for b, (_, row) in zip(base.tolist(), rendered) for s, e in row if e > s],
                     dtype=np.int64).reshape(-1, 2)
    if len(spans):
        # Exists a span with s <= start whose end e >= max(start + 1, end)  <=>  the running maximum of the
        # ends of the spans (sorted by start) up to the last s <= start is >= max(start + 1, end).
        order = np.argsort(spans[:, 0], kind="stable")
        span_starts, reach = spans[order, 0], np.maximum.accumulate(spans[order, 1])
        last = np.searchsorted(span_starts, starts, side="right") - 1
        inside = (last >= 0) & (reach[np.maximum(last, 0)] >= np.maximum(starts + 1, ends))
    else:
        inside = np.zeros(total, dtype=bool)
    labels = np.where(inside != train_on_prompt, ids, IGNORE_INDEX)
    bounds = np.concatenate(([0], np.cumsum(lengths))).tolist()
    return [(ids[a:b], labels[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def tokenize_messages(
    tokenizer, messages: Sequence[dict], train_on_prompt: bool, tools: list | None = None
) -> tuple[list[int], list[int]]:
    """Token ids and labels: assistant turns learned, the rest -100; with `train_on_prompt` every token is
    learned except the assistant turns of weight 0, which the data marks as context in either mode."""
    ids, labels = _encode_chats(tokenizer, [(messages, tools)], train_on_prompt)[0]
    return ids.tolist(), labels.tolist()


def _with_eos(tokenizer, ids: list[int]) -> list[int]:
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        return ids + [tokenizer.eos_token_id]
    return ids


def tokenize_text(tokenizer, text: str) -> tuple[list[int], list[int]]:
    ids = _with_eos(tokenizer, tokenizer(text, add_special_tokens=True)["input_ids"])
    return ids, list(ids)


def tokenize_prompt_completion(tokenizer, prompt: str, completion: str, train_on_prompt: bool):
    prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full_ids = _with_eos(tokenizer, tokenizer(prompt + completion, add_special_tokens=True)["input_ids"])
    cut = _common_prefix_ids(prompt_ids, full_ids)
    labels = list(full_ids) if train_on_prompt else [IGNORE_INDEX] * cut + full_ids[cut:]
    return full_ids, labels


def _common_prefix_ids(a: list[int], b: list[int]) -> int:
    i = 0
    while i < min(len(a), len(b)) and a[i] == b[i]:
        i += 1
    return i


def _encode_batch(tokenizer, rows: Sequence[dict[str, Any]], train_on_prompt: bool) -> list[tuple]:
    """(ids, labels) of each row, in order: conversations and texts in one batched call each."""
    out: list[tuple] = [None] * len(rows)  # type: ignore[list-item]
    chats, chat_at, texts, text_at = [], [], [], []
    for index, row in enumerate(rows):
        if "messages" in row:
            chats.append((row["messages"], row.get("tools")))
            chat_at.append(index)
        elif "prompt" in row and "completion" in row:
            prompt, completion = row["prompt"], row["completion"]
            if isinstance(prompt, list) and isinstance(completion, list):
                chats.append((prompt + completion, None))
                chat_at.append(index)
            else:
                out[index] = tokenize_prompt_completion(tokenizer, str(prompt), str(completion), train_on_prompt)
        elif "text" in row:
            texts.append(row["text"])
            text_at.append(index)
        else:
            raise UserError(f"a prepared row has none of messages, prompt/completion or text (keys: {sorted(row)})")
    if chats:
        for index, encoded in zip(chat_at, _encode_chats(tokenizer, chats, train_on_prompt)):
            out[index] = encoded
    if texts:
        for index, ids in zip(text_at, tokenizer(texts, add_special_tokens=True)["input_ids"]):
            ids = _with_eos(tokenizer, ids)
            out[index] = (ids, ids)
    return out


BATCH_ROWS = 512  # rows per batched render / tokenizer call


@contextlib.contextmanager
def rust_threads(enabled: bool):
    """The Rust tokenizer's own threads on (TOKENIZERS_PARALLELISM=true) inside the block, then as before.

    `tokenizers` reads the variable at each batch call, so this scopes it to one call. Measured on 2 cores
    (benchmarks/tokenize_throughput.py) it beats forked workers for every tokenizer and data set: the render is
    the small Python part, the encode the large Rust one. A process forked later (DataLoader workers) sees
    the variable as it was (Fine-Tune sets false), or, where it was unset, the library's own fork guard turns
    the threads off in the child."""
    import os

    if not enabled:
        yield
        return
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def iter_tokenized(
    tokenizer, rows: Iterable[dict[str, Any]], max_seq_length: int, train_on_prompt: bool, stats: TokenizeStats,
    parallel: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, labels) of every row that keeps a learnable token, truncated to `max_seq_length` (keeping the
    start), as int64 arrays; `stats` counts what happened. With `parallel` the Rust tokenizer encodes each
    batch on every core (see `rust_threads`)."""
    iterator = iter(rows)
    for batch in iter(lambda: list(islice(iterator, BATCH_ROWS)), []):
        with rust_threads(parallel):
            encoded = _encode_batch(tokenizer, batch, train_on_prompt)
        for ids, labels in encoded:
            ids, labels = np.asarray(ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
            stats.rows += 1
            if len(ids) > max_seq_length:
                stats.truncated += 1
                ids, labels = ids[:max_seq_length], labels[:max_seq_length]
            learned = int(np.count_nonzero(labels != IGNORE_INDEX))
            if not learned:
                stats.dropped_no_target += 1
                stats.dropped_rows.append(stats.rows)
                continue
            stats.tokens += len(ids)
            stats.target_tokens += learned
            yield ids, labels


def log_counts(stats: TokenizeStats, max_seq_length: int, split: str) -> None:
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


def tokenize_rows(
    tokenizer, rows: Iterable[dict[str, Any]], max_seq_length: int, train_on_prompt: bool, split: str,
    parallel: bool = False,
) -> tuple[list[dict[str, list[int]]], TokenizeStats]:
    """Tokenize every row, truncate to `max_seq_length` (keeping the start) and count what happened."""
    stats = TokenizeStats()
    examples = [
        {"input_ids": ids.tolist(), "labels": labels.tolist(), "length": len(ids)}
        for ids, labels in iter_tokenized(tokenizer, rows, max_seq_length, train_on_prompt, stats, parallel)
    ]
    log_counts(stats, max_seq_length, split)
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

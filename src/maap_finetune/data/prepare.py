"""Data Prep's engine: read and check every row, drop duplicates, split, render, measure.

Two streaming passes keep memory bounded whatever the input size:

1. ingest: each input is read row by row; every row is checked by the task (problems are
   collected with file, line, field and reason); valid rows are reduced to compact records and
   appended to a temporary pool file on local disk. Exact duplicates are detected with 64-bit
   hashes of the records (about 70 bytes of memory per unique row).
2. emit: a seeded permutation of the pool's row indices (exact ratios, 1 byte of memory per row
   for the split label) assigns rows to train/validation/test; each record is rendered into the
   contract's row format, written to its split file, and measured (characters, or tokens with the
   base model's tokenizer), and its prompt hash is kept to report prompt overlap between splits.

Task `preference` splits by prompt instead of by row: every pair of one prompt lands in the same
split (the ratios count prompts), and a training pair whose prompt is in an explicit validation or
test input is removed from train, so no prompt is in two splits.
"""

from __future__ import annotations

import tempfile
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.data.jsonfast import dumps, loads
from maap_finetune.data.problems import Problems, RowError
from maap_finetune.data.readers import discover, iter_rows
from maap_finetune.data.tasks import TaskAdapter

SPLIT_NAMES = ("train", "validation", "test")
CHARS_PER_TOKEN = 4  # rough estimate used only when no tokenizer is given
_TOKEN_BATCH = 512


def content_hash(data: bytes) -> int:
    """A 64-bit hash of a serialized record, for exact-duplicate and overlap detection.

    Python's own bytes hash (SipHash, 64 bits) is several times faster than hashlib here. Its key
    changes per process, which only matters on a collision: at 1M rows the chance that two
    different rows collide is about 3e-8 per run.
    """
    return hash(data)


@dataclass
class InputSpec:
    name: str  # train_data, train_folder, validation_data, test_data
    path: Path
    pool: str  # which pool its rows go to: train, validation or test


@dataclass
class SplitStats:
    rows: int = 0
    chars: array = field(default_factory=lambda: array("I"))
    tokens: array = field(default_factory=lambda: array("I"))
    prompt_hashes: array = field(default_factory=lambda: array("q"))
    label_counts: dict[str, int] = field(default_factory=dict)  # classification labels / NER tags written
    # preference: the length of each side (characters; tokens of the completion with a tokenizer)
    chosen_chars: array = field(default_factory=lambda: array("I"))
    rejected_chars: array = field(default_factory=lambda: array("I"))
    chosen_tokens: array = field(default_factory=lambda: array("I"))
    rejected_tokens: array = field(default_factory=lambda: array("I"))
    # with a tokenizer: rows still longer than max_seq_length, and rows whose prompt was shortened
    too_long: int = 0
    shortened: int = 0
    tokens_cut: int = 0


@dataclass
class PrepareResult:
    rows_read: int
    rows_valid: int
    rows_rejected: int
    duplicates: dict[str, int]
    problems: Problems
    inputs: dict[str, dict]
    split_stats: dict[str, SplitStats]
    prompt_overlap: dict[str, int]
    label_set: list[str] | None
    label_counts: dict[str, dict[str, int]] | None  # per split: rows per label, or tag occurrences (ner)
    layout: str | None
    columns: dict[str, str]
    ignored_columns: dict[str, int]
    text_chunking: dict | None
    tokenizer_used: bool
    length_fit: dict | None = None  # with a tokenizer: rows too long and rows shortened (see `length_fit`)
    absent_optional: dict[str, str] = field(default_factory=dict)  # optional role -> its *_key input
    end_markers_stripped: int = 0
    truncation: str = "none"


class TextChunker:
    """Cuts raw text into pieces of at most `max_seq_length` tokens (or an estimate in characters)."""

    def __init__(self, max_seq_length: int, tokenizer: Any | None):
        self.tokenizer = tokenizer
        if tokenizer is not None:
            special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(
                tokenizer, "num_special_tokens_to_add") else 0
            self.max_units = max(1, max_seq_length - special)
            self.unit = "tokens"
        else:
            self.max_units = max_seq_length * CHARS_PER_TOKEN
            self.unit = "characters (no tokenizer given: 4 characters per token estimated)"

    def describe(self) -> dict:
        return {"max_per_chunk": self.max_units, "unit": self.unit}

    def __call__(self, text: str) -> list[str]:
        if self.tokenizer is not None:
            offsets = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            if len(offsets) <= self.max_units:
                return [text]
            starts = [offsets[i][0] for i in range(0, len(offsets), self.max_units)]
            bounds = [*starts[1:], len(text)]
            pieces = [text[s:e] for s, e in zip(starts, bounds)]
        else:
            pieces = []
            rest = text
            while len(rest) > self.max_units:
                cut = rest.rfind(" ", self.max_units // 2, self.max_units + 1)
                cut = cut + 1 if cut > 0 else self.max_units
                pieces.append(rest[:cut])
                rest = rest[cut:]
            pieces.append(rest)
        return [p for p in pieces if p.strip()]


class TokenCounter:
    """Counts tokens of rendered rows in batches, as fine-tuning will see them (chat template)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    def count(self, rows: list[dict]) -> list[int]:
        tok = self.tokenizer
        if "chosen" in rows[0]:
            return [prompt + max(chosen, rejected) for prompt, chosen, rejected in self.count_pairs(rows)]
        if "text" in rows[0]:
            encoded = tok([r["text"] for r in rows], add_special_tokens=True)["input_ids"]
        elif self.has_template and any("tools" in r for r in rows):  # tools differ per row: one by one
            texts = [tok.apply_chat_template(r["messages"], tools=r.get("tools"), tokenize=False) for r in rows]
            encoded = tok(texts, add_special_tokens=False)["input_ids"]
        elif self.has_template:
            texts = tok.apply_chat_template([r["messages"] for r in rows], tokenize=False)
            encoded = tok(texts, add_special_tokens=False)["input_ids"]
        else:
            texts = ["\n".join(m["content"] for m in r["messages"]) for r in rows]
            encoded = tok(texts, add_special_tokens=True)["input_ids"]
        return [len(ids) for ids in encoded]

    def count_pairs(self, rows: list[dict]) -> list[tuple[int, int, int]]:
        """Preference rows: (prompt tokens, chosen tokens, rejected tokens), as DPO tokenizes them."""
        tok = self.tokenizer
        counts = []
        for row in rows:
            tools = row.get("tools")
            if self.has_template:
                def render(messages, generation):
                    return tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                                   add_generation_prompt=generation)
                texts = [render(row["prompt"], True), render(row["prompt"] + row["chosen"], False),
                         render(row["prompt"] + row["rejected"], False)]
                special = False
            else:
                prompt = "\n".join(m["content"] for m in row["prompt"])
                texts = [prompt] + [prompt + "\n" + "".join(m["content"] for m in row[side])
                                    for side in ("chosen", "rejected")]
                special = True
            prompt_n, chosen_n, rejected_n = (len(ids) for ids in tok(texts, add_special_tokens=special)["input_ids"])
            counts.append((prompt_n, max(0, chosen_n - prompt_n), max(0, rejected_n - prompt_n)))
        return counts


def ingest(inputs: list[InputSpec], adapter: TaskAdapter, problems: Problems, workdir: Path,
           chunker: TextChunker | None = None) -> dict[str, Any]:
    """Pass 1: read, check and deduplicate every row of every input into per-pool files."""
    pools: dict[str, Any] = {}
    counts = {pool: 0 for pool in SPLIT_NAMES}
    duplicates = {pool: 0 for pool in SPLIT_NAMES}
    duplicates["train_rows_also_in_validation_or_test"] = 0
    inputs_info: dict[str, dict] = {}
    eval_hashes: set[int] = set()
    eval_prompts: set[int] = set()  # preference: prompts of explicit validation/test pairs
    train_groups = array("q")  # preference: the prompt hash of each train-pool row (its split group)
    preference = adapter.task == "preference"
    if preference:
        duplicates["train_rows_prompt_in_validation_or_test"] = 0
    seen: set[int] = set()
    documents = {pool: 0 for pool in SPLIT_NAMES}  # text: documents with a chunk written
    last_document = None
    rows_read = rows_rejected = 0
    # Explicit validation/test inputs first, so a train row repeating one of them is the one removed.
    ordered = sorted(inputs, key=lambda spec: spec.pool == "train")
    for spec in ordered:
        files, ignored = discover(spec.path, spec.name)
        info = {"path": str(spec.path), "files": [], "ignored_files": ignored}
        inputs_info[spec.name] = info
        pool_path = workdir / f"pool_{spec.pool}.jsonl"
        handle = pools.get(spec.pool) or open(pool_path, "ab")
        pools[spec.pool] = handle
        input_rows = 0
        for data_file in files:
            file_rows = 0
            tabular = data_file.tabular_text
            display = data_file.display
            for lineno, row in iter_rows(data_file, problems):
                file_rows += 1
                try:
                    record = adapter.extract(row, f"{display} line {lineno}", tabular)
                    first = dumps(record)
                    if b"\\u0000" in first:
                        check_no_nul(record)
                except RowError as err:
                    problems.add_row_error(display, lineno, err)
                    rows_rejected += 1
                    continue
                if chunker is None:
                    encoded = [first]
                else:
                    encoded = [dumps({"text": c}) for c in chunker(record["text"])]
                    document = content_hash(first)
                for data in encoded:
                    digest = content_hash(data)
                    if spec.pool == "train" and digest in eval_hashes:
                        duplicates["train_rows_also_in_validation_or_test"] += 1
                        continue
                    if digest in seen:
                        duplicates[spec.pool] += 1
                        continue
                    if preference:
                        prompt = content_hash(dumps(record["prompt"]))
                        if spec.pool == "train" and prompt in eval_prompts:
                            duplicates["train_rows_prompt_in_validation_or_test"] += 1
                            continue
                        if spec.pool == "train":
                            train_groups.append(prompt)
                        else:
                            eval_prompts.add(prompt)
                    elif chunker is not None:
                        if spec.pool == "train":
                            train_groups.append(document)  # split by document: no document in two splits
                        if document != last_document:
                            documents[spec.pool] += 1
                            last_document = document
                    seen.add(digest)
                    if spec.pool != "train":
                        eval_hashes.add(digest)
                    handle.write(data + b"\n")
                    counts[spec.pool] += 1
            info["files"].append({"file": display, "format": data_file.format + (".gz" if data_file.gzipped else ""),
                                  "rows_read": file_rows})
            input_rows += file_rows
        # Rows a reader could not decode were never yielded: count them from the problems.
        info["rows"] = input_rows
        rows_read += input_rows
        if input_rows == 0 and not _input_had_problems(problems, files):
            raise UserError(f"{spec.name} {spec.path}: no rows (the input is empty or holds only blank lines)")
    for handle in pools.values():
        handle.close()
    undecodable = sum(problems.counts[k] for k in ("invalid_json", "not_utf8", "malformed_row"))
    return {
        "counts": counts,
        "duplicates": duplicates,
        "inputs": inputs_info,
        "rows_read": rows_read + undecodable,
        "rows_rejected": rows_rejected + undecodable,
        "pool_paths": {pool: workdir / f"pool_{pool}.jsonl" for pool in pools},
        "train_groups": train_groups if preference or chunker is not None else None,
        "documents": documents if chunker is not None else None,
    }


def length_fit(stats: dict[str, SplitStats], max_seq_length: int) -> dict[str, Any]:
    """Rows longer than max_seq_length (after any prompt truncation) and rows shortened, per split."""
    rows = sum(stats[name].rows for name in SPLIT_NAMES)
    too_long = sum(stats[name].too_long for name in SPLIT_NAMES)
    return {
        "max_seq_length": max_seq_length,
        "rows": rows,
        "too_long": {name: stats[name].too_long for name in SPLIT_NAMES},
        "too_long_ratio": round(too_long / rows, 4) if rows else 0.0,
        "shortened": {name: stats[name].shortened for name in SPLIT_NAMES},
        "tokens_cut": {name: stats[name].tokens_cut for name in SPLIT_NAMES},
    }


def check_lengths(stats: dict[str, SplitStats], max_seq_length: int, max_ratio: float, truncation: str) -> None:
    """Say at once how many rows cannot fit; fail when more than `max_ratio` of them cannot."""
    fit = length_fit(stats, max_seq_length)
    too_long = sum(fit["too_long"].values())
    if not too_long:
        return
    per_split = ", ".join(f"{k} {v}" for k, v in fit["too_long"].items())
    message = (f"{too_long} of {fit['rows']} rows ({fit['too_long_ratio']:.1%}) are longer than max_seq_length "
               f"{max_seq_length} tokens ({per_split}); Fine-Tune cuts their end, which is the answer, and drops "
               "those left with nothing to learn, and Evaluate scores what is left")
    print(f"data prep: {message}", flush=True)
    if too_long / fit["rows"] > max_ratio:
        hint = ("" if truncation == "prompt" else "set truncation prompt to shorten the prompts, ")
        raise UserError(
            f"{message}. That is more than max_too_long_ratio {max_ratio:g}: raise max_seq_length (here and in "
            f"Fine-Tune; the data report gives the lengths), {hint}shorten the rows, or raise max_too_long_ratio")


def check_labels_in_train(stats: dict[str, SplitStats], adapter: TaskAdapter) -> None:
    """A label that occurs in validation or test but never in train is one the model cannot learn."""
    train = stats["train"].label_counts
    unseen = sorted({label for name in ("validation", "test") for label in stats[name].label_counts} - set(train))
    if not unseen:
        return
    details = "; ".join(
        f"{label!r} ({sum(stats[n].label_counts.get(label, 0) for n in ('validation', 'test'))} row(s): "
        + ", ".join(adapter.label_rows.get(label, [])) + ")" for label in unseen[:10])
    raise UserError(
        f"label(s) of field {adapter.columns.get('label')!r} only in the validation/test split, never in train: "
        f"{details}. The model cannot learn them. "
        "A truncated or mistyped file often leaves one; fix or remove those rows, add training rows for them, "
        "or give the splits explicitly (validation_data, test_data)")


def check_no_nul(value: Any, where: str = "") -> None:
    """Refuse a NUL character anywhere in a record's text: tokenizers and chat templates pass it on as
    data, and no dataset means it (it is what a binary file or a broken export leaves behind)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise RowError("nul_character", where or None,
                           f"the text holds a NUL character (\\u0000) at position {value.index(chr(0))}; "
                           "remove it from the data")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_no_nul(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_no_nul(item, f"{where}[{i}]")


def _input_had_problems(problems: Problems, files: list) -> bool:
    names = {f.display for f in files}
    return any(p.file in names for examples in problems.examples.values() for p in examples)


def split_labels(n: int, validation_ratio: float, test_ratio: float, seed: int,
                 explicit: set[str], groups: Any = None) -> tuple[Any, dict[str, int]]:
    """Seeded, exact-size assignment of the train pool's rows to splits (0 train, 1 validation, 2 test).

    With `groups` (one key per row), whole groups are assigned and the ratios count groups."""
    import numpy as np

    if groups is not None:
        keys = np.frombuffer(groups, dtype=np.int64) if hasattr(groups, "typecode") else np.asarray(groups)
        # Groups numbered by first appearance: the hash values themselves change per process.
        unique, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rank = np.empty(len(unique), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(unique))
        group_labels, _ = split_labels(len(unique), validation_ratio, test_ratio, seed, explicit)
        labels = group_labels[rank[inverse.reshape(-1)]]
        return labels, {"validation": int((labels == 1).sum()), "test": int((labels == 2).sum())}
    n_val = 0 if "validation" in explicit else int(round(n * validation_ratio))
    n_test = 0 if "test" in explicit else int(round(n * test_ratio))
    if n - n_val - n_test < 1:
        raise UserError(
            f"{n} valid unique rows leave no training rows with validation_ratio={validation_ratio} and "
            f"test_ratio={test_ratio}; lower the ratios or add data"
        )
    labels = np.zeros(n, dtype=np.int8)
    order = np.random.default_rng(seed).permutation(n)
    labels[order[:n_val]] = 1
    labels[order[n_val:n_val + n_test]] = 2
    return labels, {"validation": n_val, "test": n_test}


def emit(pool_paths: dict[str, Path], counts: dict[str, int], adapter: TaskAdapter, out_dir: Path,
         labels: Any, token_counter: TokenCounter | None, truncator: Any = None,
         max_seq_length: int | None = None) -> tuple[dict[str, SplitStats], dict[str, int]]:
    """Pass 2: render each record, measure it (shortening its prompt when it is too long and a
    truncator is given) and write it to its split file."""
    adapter.prepare_render()
    stats = {name: SplitStats() for name in SPLIT_NAMES}
    writers = {name: open(out_dir / f"{name}.jsonl", "wb") for name in SPLIT_NAMES}
    pending: dict[str, list[tuple[dict, bytes | None, dict]]] = {name: [] for name in SPLIT_NAMES}
    train_prompts: set[int] = set()
    task = adapter.task
    is_text = task == "text"
    is_preference = task == "preference"
    is_rft = task == "rft"
    count_labels = task in ("classification", "ner")

    def commit(name: str, out: dict, line: bytes | None) -> None:
        """Write one output row (its pool line when rendering left the record as it was) and measure it."""
        writers[name].write(line if line is not None else dumps(out) + b"\n")
        split = stats[name]
        if is_text:
            split.chars.append(len(out["text"]))
            prompt = hash(dumps(out["text"]))
        elif is_preference:
            chosen = sum(len(m["content"]) for m in out["chosen"])
            rejected = sum(len(m["content"]) for m in out["rejected"])
            split.chosen_chars.append(chosen)
            split.rejected_chars.append(rejected)
            split.chars.append(sum(len(m["content"]) for m in out["prompt"]) + max(chosen, rejected))
            prompt = hash(dumps(out["prompt"]))
        else:
            messages = out["messages"]
            split.chars.append(sum([len(m["content"]) for m in messages]))
            prompt = hash(dumps(messages if is_rft else messages[:-1]))  # an rft row is all prompt
        if name == "train":
            train_prompts.add(prompt)
        else:
            split.prompt_hashes.append(prompt)

    def flush(name: str) -> None:
        batch = pending[name]
        if not batch:
            return
        split = stats[name]
        if is_preference:
            for prompt, chosen, rejected in token_counter.count_pairs([out for out, _, _ in batch]):
                split.tokens.append(prompt + max(chosen, rejected))
                split.chosen_tokens.append(chosen)
                split.rejected_tokens.append(rejected)
            for out, line, _ in batch:
                commit(name, out, line)
        else:
            for (out, line, record), tokens in zip(batch, token_counter.count([out for out, _, _ in batch])):
                if tokens > max_seq_length and truncator is not None:
                    shortened = truncator.shorten(record, out, tokens)
                    if shortened is not None:
                        split.shortened += 1
                        split.tokens_cut += tokens - shortened.tokens
                        out, line, tokens = shortened.row, None, shortened.tokens
                if tokens > max_seq_length:
                    split.too_long += 1
                split.tokens.append(tokens)
                commit(name, out, line)
        batch.clear()

    try:
        for pool in SPLIT_NAMES:
            path = pool_paths.get(pool)
            if path is None:
                continue
            with open(path, "rb") as handle:
                for index, line in enumerate(handle):
                    name = SPLIT_NAMES[labels[index]] if pool == "train" else pool
                    record = loads(line)
                    out = adapter.render(record)
                    split = stats[name]
                    split.rows += 1
                    if count_labels:
                        counts = split.label_counts
                        for label in ([record["label"]] if task == "classification" else record["tags"]):
                            counts[label] = counts.get(label, 0) + 1
                    if token_counter is None:
                        commit(name, out, line if out is record else None)
                        continue
                    pending[name].append((out, line if out is record else None, record))
                    if len(pending[name]) >= _TOKEN_BATCH:
                        flush(name)
        for name in SPLIT_NAMES:
            if token_counter is not None:
                flush(name)
    finally:
        for writer in writers.values():
            writer.close()
    overlap = {}
    if task != "text":
        for name in ("validation", "test"):
            overlap[name] = sum(1 for h in stats[name].prompt_hashes if h in train_prompts)
    return stats, overlap


def prepare(inputs: list[InputSpec], adapter: TaskAdapter, out_dir: Path, *, validation_ratio: float,
            test_ratio: float, seed: int, on_invalid: str, tokenizer: Any | None = None,
            max_seq_length: int = 2048, on_problems: Callable[[Problems], None] | None = None,
            tokenizer_name: str = "model_path", truncation: str = "none",
            max_too_long_ratio: float = 1.0) -> PrepareResult:
    """Run both passes; raise UserError (after `on_problems`) when on_invalid is fail and rows are bad,
    when more than `max_too_long_ratio` of the rows are still longer than `max_seq_length` (with a
    tokenizer), or when a classification label occurs in validation/test but not in train."""
    problems = Problems()
    chunker = TextChunker(max_seq_length, tokenizer) if adapter.task == "text" else None
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="maap-data-prep-") as tmp:
        ingested = ingest(inputs, adapter, problems, Path(tmp), chunker)
        if problems and on_invalid == "fail":
            if on_problems is not None:
                on_problems(problems)
            raise UserError(
                f"data validation failed: {problems.total} problem(s) in {ingested['rows_read']} rows read "
                "(on_invalid=fail). Fix the rows, or set on_invalid=skip to drop them and count them in the "
                "data report:\n" + problems.summary()
            )
        counts = ingested["counts"]
        if counts["train"] == 0:
            raise UserError(
                f"no valid rows to train on: {ingested['rows_read']} read, {ingested['rows_rejected']} rejected, "
                f"{sum(ingested['duplicates'].values())} duplicates"
                + (":\n" + problems.summary() if problems else "")
            )
        explicit = {spec.pool for spec in inputs if spec.pool != "train"}
        labels, _ = split_labels(counts["train"], validation_ratio, test_ratio, seed, explicit,
                                 groups=ingested["train_groups"])
        if tokenizer is not None and adapter.uses_tools:
            from maap_finetune.data.chat_template import check_tools_support

            check_tools_support(tokenizer, tokenizer_name, "the data")
        token_counter = TokenCounter(tokenizer) if tokenizer is not None else None
        truncator = None
        if token_counter is not None and truncation == "prompt" and adapter.output_format == "messages":
            from maap_finetune.data.truncation import PromptTruncator

            truncator = PromptTruncator(adapter, token_counter, max_seq_length)
        stats, overlap = emit(ingested["pool_paths"], counts, adapter, out_dir, labels, token_counter, truncator,
                              max_seq_length)
    if token_counter is not None and adapter.output_format == "messages":
        check_lengths(stats, max_seq_length, max_too_long_ratio, truncation)
    text_chunking = None
    if chunker is not None:
        import numpy as np

        keys = np.frombuffer(ingested["train_groups"], dtype=np.int64)
        documents = {name: (0 if name == "train" else ingested["documents"][name])
                     + int(np.unique(keys[labels == index]).size) for index, name in enumerate(SPLIT_NAMES)}
        text_chunking = {**chunker.describe(), "split_by": "document", "documents": documents,
                         "chunks": {name: stats[name].rows for name in SPLIT_NAMES}}
    label_set = adapter.label_set()
    if adapter.task == "classification":
        check_labels_in_train(stats, adapter)
    return PrepareResult(
        rows_read=ingested["rows_read"],
        rows_valid=ingested["rows_read"] - ingested["rows_rejected"],
        rows_rejected=ingested["rows_rejected"],
        duplicates=ingested["duplicates"],
        problems=problems,
        inputs=ingested["inputs"],
        split_stats=stats,
        prompt_overlap=overlap,
        label_set=label_set,
        label_counts={name: {label: stats[name].label_counts.get(label, 0) for label in label_set}
                      for name in SPLIT_NAMES} if label_set is not None else None,
        layout=adapter.schema.name if adapter.schema else None,
        columns=dict(adapter.columns),
        ignored_columns=dict(adapter.ignored_columns),
        text_chunking=text_chunking,
        tokenizer_used=tokenizer is not None,
        length_fit=length_fit(stats, max_seq_length) if token_counter is not None else None,
        absent_optional=adapter.absent_optional(),
        end_markers_stripped=adapter.end_markers_stripped,
        truncation=truncation if truncator is not None else "none",
    )

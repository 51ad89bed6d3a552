"""Tokenize once per run: global rank 0 tokenizes, every other rank memory-maps its result.

Rank 0 turns the prepared train and validation splits into token ids and labels (`training.data`) and
saves them as Arrow files (Hugging Face `datasets`' `save_to_disk`) under the checkpoints output,
`<checkpoints>/tokenized/`, while the other ranks wait at a barrier (`TrainingArguments.main_process_first(
local=False)`); then every rank opens them with `load_from_disk`, which memory-maps the files, so no rank
holds a Python copy of the data. The checkpoints output is the one folder every node of an Azure ML job
mounts at the same place, and it outlives a preempted attempt: a restarted job whose data, tokenizer,
template and settings are unchanged (the `key` in `tokenized.json`) reuses the files instead of
tokenizing again. A node-local cache would mean one tokenization per node, and a Data Prep step that
tokenized would need the model's tokenizer and Fine-Tune's settings (max_seq_length, train_on_prompt,
chat_template) as its own inputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maap_finetune.common import tracking
from maap_finetune.training.data import TokenizeStats, iter_tokenized, log_counts

log = logging.getLogger(__name__)

FOLDER = "tokenized"
RECORD = "tokenized.json"
FORMAT_VERSION = 1  # bump when training.data's output changes, so older files are not reused
SPLITS = ("train", "validation")
CHUNK_ROWS = 4096  # rows per Arrow record batch


@dataclass
class Tokenized:
    train: Any  # datasets.Dataset, memory-mapped
    validation: Any
    train_stats: TokenizeStats
    eval_stats: TokenizeStats
    tokenized_on: str  # "rank 0": this attempt's global rank 0; "earlier attempt": reused after a restart
    seconds: float  # how long rank 0 took to tokenize both splits and write them
    folder: Path


def key_of(tokenizer, prepared, max_seq_length: int, train_on_prompt: bool) -> str:
    """What the token ids depend on: the split files, the tokenizer, its chat template and the settings."""
    digest = hashlib.sha256()
    settings = {
        "format_version": FORMAT_VERSION,
        "max_seq_length": max_seq_length,
        "train_on_prompt": train_on_prompt,
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special_tokens": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
        "eos_token_id": tokenizer.eos_token_id,
        "tokenizer_class": type(tokenizer).__name__,
    }
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)  # the Rust tokenizer: vocabulary, merges, rules
    digest.update(backend.to_str().encode() if backend is not None else
                  json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for split in SPLITS:
        with open(prepared.split_path(split), "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _table(examples) -> Any:
    """An Arrow table (input_ids, labels: list<int32>; length: int64) built chunk by chunk from numpy arrays."""
    import numpy as np
    import pyarrow as pa

    schema = pa.schema([("input_ids", pa.list_(pa.int32())), ("labels", pa.list_(pa.int32())),
                        ("length", pa.int64())])
    batches, ids, labels = [], [], []

    def flush():
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        offsets = pa.array(np.concatenate(([0], np.cumsum(lengths))).astype(np.int32))
        batches.append(pa.record_batch([
            pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(ids).astype(np.int32))),
            pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(labels).astype(np.int32))),
            pa.array(lengths),
        ], schema=schema))
        ids.clear()
        labels.clear()

    for example_ids, example_labels in examples:
        ids.append(example_ids)
        labels.append(example_labels)
        if len(ids) == CHUNK_ROWS:
            flush()
    if ids:
        flush()
    return pa.Table.from_batches(batches, schema=schema)


def _write(tokenizer, prepared, max_seq_length: int, train_on_prompt: bool, folder: Path, key: str) -> None:
    from datasets import Dataset

    started = time.perf_counter()
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    stats = {}
    for split in SPLITS:
        split_stats = TokenizeStats()
        # Every core: the other ranks wait at the barrier meanwhile.
        table = _table(iter_tokenized(tokenizer, prepared.rows(split), max_seq_length, train_on_prompt, split_stats,
                                      parallel=True))
        with _quiet_datasets():
            Dataset(table).save_to_disk(str(partial / split))
        log_counts(split_stats, max_seq_length, split)
        stats[split] = asdict(split_stats)
    seconds = time.perf_counter() - started
    record = {"key": key, "seconds": round(seconds, 3), "stats": stats}
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")  # written last: complete
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    log.info("tokenized %d train and %d validation rows (%d + %d tokens) in %.1f s on rank 0 into %s",
             stats["train"]["rows"], stats["validation"]["rows"], stats["train"]["tokens"],
             stats["validation"]["tokens"], seconds, folder)


@contextlib.contextmanager
def _quiet_datasets():
    """No `datasets` progress bars in the step's log (the Trainer's are off too)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


def _record(folder: Path) -> dict | None:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def tokenize_once(
    tokenizer, prepared, max_seq_length: int, train_on_prompt: bool, root: str | Path, main_process_first=None
) -> Tokenized:
    """The tokenized train and validation splits, tokenized by global rank 0 only (see the module docstring).

    `main_process_first` is `TrainingArguments.main_process_first` (a barrier when there are several ranks)."""
    from datasets import load_from_disk

    folder = Path(root) / FOLDER
    tokenized_on = "rank 0"
    first = main_process_first(local=False, desc="tokenize") if main_process_first else contextlib.nullcontext()
    with first:
        if tracking.is_main_process():
            key = key_of(tokenizer, prepared, max_seq_length, train_on_prompt)
            record = _record(folder)
            if record is not None and record["key"] == key:
                tokenized_on = "earlier attempt"
                log.info("reusing the data tokenized by an earlier attempt of this job in %s", folder)
            else:
                _write(tokenizer, prepared, max_seq_length, train_on_prompt, folder, key)
        else:
            log.info("memory-mapping the data rank 0 tokenized into %s", folder)
        record = _record(folder)
        train, validation = (load_from_disk(str(folder / split)) for split in SPLITS)
    return Tokenized(
        train=train,
        validation=validation,
        train_stats=TokenizeStats(**record["stats"]["train"]),
        eval_stats=TokenizeStats(**record["stats"]["validation"]),
        tokenized_on=tokenized_on,
        seconds=float(record["seconds"]),
        folder=folder,
    )

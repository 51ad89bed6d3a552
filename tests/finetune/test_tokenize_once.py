"""training.tokenized: rank 0 writes the tokenized splits once as memory-mapped Arrow files, equal to
training.data's examples; a restart with the same inputs reuses them; other inputs tokenize again.
(Two real ranks: tests/finetune/test_resume_and_distributed.py::test_two_cpu_processes_gloo.)"""

from __future__ import annotations

from maap_finetune.data.prepared import load_prepared
from maap_finetune.training.data import tokenize_rows
from maap_finetune.training.tokenized import FOLDER, RECORD, tokenize_once


def test_tokenized_once_equals_the_examples_and_is_reused_after_a_restart(tmp_path, tiny_model_dir, prepared_chat):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prepared = load_prepared(prepared_chat)
    first = tokenize_once(tokenizer, prepared, 48, False, tmp_path)
    assert first.tokenized_on == "rank 0" and first.seconds > 0 and first.folder == tmp_path / FOLDER
    for split, dataset, stats in (("train", first.train, first.train_stats),
                                  ("validation", first.validation, first.eval_stats)):
        examples, expected = tokenize_rows(tokenizer, prepared.rows(split), 48, False, split)
        assert dataset.to_list() == examples and stats == expected
        assert all(f["filename"].startswith(str(tmp_path / FOLDER)) for f in dataset.cache_files)  # memory-mapped
    assert first.train_stats.truncated > 0  # max_seq_length 48 cuts some sample chats
    written = (tmp_path / FOLDER / RECORD).stat().st_mtime_ns

    again = tokenize_once(tokenizer, prepared, 48, False, tmp_path)  # a restarted attempt: same inputs
    assert again.tokenized_on == "earlier attempt" and again.seconds == first.seconds
    assert (tmp_path / FOLDER / RECORD).stat().st_mtime_ns == written and again.train.to_list() == first.train.to_list()

    longer = tokenize_once(tokenizer, prepared, 512, False, tmp_path)  # another setting: tokenized again
    assert longer.tokenized_on == "rank 0" and longer.train_stats.truncated == 0
    assert longer.train.to_list() == tokenize_rows(tokenizer, prepared.rows("train"), 512, False, "train")[0]

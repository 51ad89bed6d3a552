"""Evaluate writes Export ONNX's parity reference from the fine-tuned model it has loaded: the merged weights
Export builds from, fingerprinted, scored exactly as Evaluate scores the loss."""

from __future__ import annotations

import json

import pytest

from maap_finetune.evaluation import parity_reference
from tests.evaluate.test_evaluate import run_evaluate


def test_the_reference_is_the_tuned_models_and_names_what_it_was_computed_for(
        tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model, tiny_model_dir):
    out = run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir, max_eval_samples=4,
                       parity_prompts=4, parity_max_new_tokens=8, max_seq_length=256, sample_generations=0)
    reference = json.loads((out / parity_reference.REFERENCE_FILE).read_text())
    assert (reference["prompts"], reference["max_new_tokens"], reference["max_seq_length"]) == (4, 8, 256)
    # The weights Evaluate scored as "fine-tuned" are the merged mlflow_model's files, byte for byte.
    assert reference["model_sha256"] == parity_reference.folder_sha256(finetuned_mlflow_model / "model")
    assert reference["tokenizer_sha256"] == parity_reference.folder_sha256(
        finetuned_mlflow_model / "components" / "tokenizer")
    assert reference["test_split_sha256"] == parity_reference.file_sha256(prepared_chat / "test.jsonl")
    assert (reference["dtype"], reference["device"], reference["weights_dtype"]) == ("float32", "cpu", "float32")
    assert reference["machine"]["device"] == "cpu" and reference["timing"]["decode_tokens_per_s"] > 0
    assert [g["line"] for g in reference["generation"]] == [1, 2, 3, 4]
    assert all(0 < len(g["tokens"]) <= 8 and g["prompt_ids"] for g in reference["generation"])
    # Teacher-forced NLL of the reference tokens is Evaluate's loss on the same rows (batched there, one by one here).
    metrics = json.loads((out / "metrics.json").read_text())
    nll = [x for entry in reference["teacher_forced"] for x in entry["nll"]]
    assert len(nll) == metrics["loss_details"]["finetuned"]["scored_tokens"]
    assert sum(nll) / len(nll) == pytest.approx(metrics["finetuned"]["loss"], rel=1e-5)
    assert all(len(e["top1"]) == len(e["nll"]) == len(e["ids"]) - e["start"] for e in reference["teacher_forced"])


def test_no_reference_without_parity_prompts(tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model,
                                             tiny_model_dir):
    out = run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir, max_eval_samples=2,
                       parity_prompts=0, sample_generations=0)
    assert (out / "decision.json").is_file() and not (out / parity_reference.REFERENCE_FILE).exists()


def test_a_parity_generation_longer_than_the_sequence_is_refused(tmp_path):
    from maap_finetune.common.errors import ConfigErrors
    from tests.helpers import argv_from_spec, load_entry

    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "MLmodel").write_text("")
    argv = argv_from_spec("evaluate", test_data=tmp_path, mlflow_model=tmp_path / "m", model_path=tmp_path,
                          evaluation=tmp_path / "out", max_seq_length=64, max_new_tokens=8, parity_max_new_tokens=64)
    with pytest.raises(ConfigErrors, match="--parity_max_new_tokens 64 leaves no room"):
        load_entry("evaluate").parse_args(argv)

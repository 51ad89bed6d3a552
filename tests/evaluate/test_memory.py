"""Evaluate holds one model at a time: the base is freed before the fine-tuned model loads (for chat rows,
and for preference pairs, whose implicit reward needs both models' log-probabilities); and each model is
evaluated in fp32 on the CPU, whatever dtype it was saved in."""

from __future__ import annotations

import json
import weakref

import pytest

from tests.evaluate.test_evaluate import run_evaluate
from tests.finetune.test_preference import write_prepared_pairs


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory):
    return write_prepared_pairs(tmp_path_factory.mktemp("pairs"), held_out=4)


def count_live_models(monkeypatch) -> tuple[list, list[int]]:
    """Wrap generation.load_model: (weak references to every model it returned, how many earlier ones were
    still alive at each call)."""
    from maap_finetune.evaluation import generation

    loaded, live_at_load = [], []
    real = generation.load_model

    def counting(*args, **kwargs):
        live_at_load.append(sum(ref() is not None for ref in loaded))
        result = real(*args, **kwargs)
        loaded.append(weakref.ref(result.model))
        return result

    monkeypatch.setattr(generation, "load_model", counting)
    return loaded, live_at_load


@pytest.mark.parametrize("data", ["chat", "preference"])
def test_evaluate_holds_one_model_at_a_time(data, tmp_path, monkeypatch, mlflow_tracking, prepared_chat,
                                            prepared_pairs, untrained_mlflow_model, tiny_model_dir):
    loaded, live_at_load = count_live_models(monkeypatch)
    prepared = prepared_chat if data == "chat" else prepared_pairs
    out = run_evaluate(tmp_path, prepared, untrained_mlflow_model, tiny_model_dir, max_new_tokens=4,
                       max_seq_length=256, sample_generations=2)
    assert live_at_load == [0, 0]  # base, then fine-tuned: nothing else alive when each loads
    assert [ref() for ref in loaded] == [None, None]  # and both freed when Evaluate returns
    metrics = json.loads((out / "metrics.json").read_text())
    if data == "preference":  # the implicit reward was still computed from both models' log-probabilities
        assert metrics["implicit_reward"]["pairs"] == 4 and metrics["implicit_reward"]["mean_margin"] == 0.0


def test_a_bf16_model_is_evaluated_in_fp32_on_cpu(tmp_path, tiny_model_dir, prepared_chat):
    """Loaded in fp32 (exact for bf16 weights), a bf16-saved model gives the loss of its fp32 copy, to the bit."""
    import torch
    from transformers import AutoModelForCausalLM

    from maap_finetune.evaluation import generation

    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    bf16.to(torch.float32).save_pretrained(tmp_path / "fp32")
    examples = generation.read_examples(prepared_chat / "test.jsonl", "messages", 6)
    losses = []
    for folder in ("bf16", "fp32"):
        loaded = generation.load_model(str(tmp_path / folder), str(tiny_model_dir), False, device="cpu")
        assert loaded.model.dtype == torch.float32
        losses.append(generation.compute_loss(loaded, examples, 256, 4).loss)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert losses[0] == losses[1]

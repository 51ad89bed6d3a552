"""Evaluate on preference pairs: log-likelihoods of chosen and rejected, the ranking metrics, DPO's
implicit reward, and the default gate (gate_metric auto: tuned preference_accuracy above the base's)."""

from __future__ import annotations

import json
import math

import pytest

from maap_finetune.evaluation import gate, preference
from tests.evaluate.test_evaluate import run_evaluate
from tests.finetune.test_preference import write_prepared_pairs


@pytest.fixture(scope="module")
def prepared_pairs(tmp_path_factory):
    return write_prepared_pairs(tmp_path_factory.mktemp("pairs"), held_out=6)


def test_pair_logps_are_the_summed_answer_log_probabilities(tiny_model_dir, prepared_pairs):
    import torch

    from maap_finetune.evaluation.generation import load_model
    from maap_finetune.training.preference import tokenize_pair

    loaded = load_model(str(tiny_model_dir), str(tiny_model_dir), False, device="cpu")
    pairs = preference.read_pairs(prepared_pairs / "test.jsonl", 3)
    expected = []
    for pair in pairs:
        prompt, chosen, rejected = tokenize_pair(loaded.tokenizer, pair)
        sides = []
        for answer in (chosen, rejected):
            ids = prompt + answer
            with torch.no_grad():
                logps = torch.log_softmax(loaded.model(input_ids=torch.tensor([ids])).logits[0], dim=-1)
            sides.append(float(sum(logps[t - 1, ids[t]] for t in range(len(prompt), len(ids)))))
        expected.append(tuple(sides))
    for batch_size in (1, 4):  # padded batches score the same as one sequence at a time
        got = preference.pair_logps(loaded, pairs, max_seq_length=512, batch_size=batch_size)
        flat = [value for pair in got for value in pair]
        assert flat == pytest.approx([value for pair in expected for value in pair], rel=1e-4)


def test_ranking_metrics_and_implicit_reward():
    base = [(-10.0, -12.0), (-8.0, -7.0), (-5.0, -5.5)]
    tuned = [(-9.0, -14.0), (-7.0, -8.0), (-6.0, -5.0)]
    assert preference.preference_metrics(tuned) == pytest.approx(
        {"preference_accuracy": 2 / 3, "preference_margin": (5 + 1 - 1) / 3, "chosen_logp": -22 / 3,
         "rejected_logp": -9.0})
    reward = preference.implicit_reward(base, tuned, beta=0.5)
    # margins: 0.5*((1)-(-2)) = 1.5, 0.5*((1)-(-1)) = 1.0, 0.5*((-1)-(0.5)) = -0.75
    assert reward["accuracy"] == pytest.approx(2 / 3) and reward["mean_margin"] == pytest.approx((1.5 + 1 - 0.75) / 3)
    assert math.isnan(preference.preference_metrics([])["preference_accuracy"])


def test_auto_gate_is_preference_accuracy_for_pairs_and_loss_otherwise():
    assert gate.resolve_metric("auto", "preference") == "preference_accuracy"
    assert gate.resolve_metric("auto", "chat") == "loss"
    assert gate.resolve_metric("rouge1", "preference") == "rouge1"
    assert gate.gate_problems(gate.Gate("preference_accuracy", None, 0.0), "preference") == []
    assert "not measured for task 'chat'" in gate.gate_problems(gate.Gate("preference_accuracy", None, 0.0), "chat")[0]


def test_evaluate_preference_pairs_end_to_end(tmp_path, mlflow_tracking, prepared_pairs, untrained_mlflow_model,
                                              tiny_model_dir):
    """The base model as the 'fine-tuned' one: every ranking is the base's, so the default gate fails."""
    out = run_evaluate(tmp_path, prepared_pairs, untrained_mlflow_model, tiny_model_dir, max_new_tokens=8,
                       max_seq_length=256, sample_generations=2)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "preference" and metrics["rows_evaluated"] == 6
    for side in ("base", "finetuned"):
        assert set(metrics[side]) >= {"loss", "perplexity", "preference_accuracy", "preference_margin",
                                      "chosen_logp", "rejected_logp"}
    assert metrics["deltas"]["preference_accuracy"] == 0.0
    assert metrics["implicit_reward"]["accuracy"] == 0.0 and metrics["implicit_reward"]["mean_margin"] == 0.0
    assert metrics["implicit_reward"]["beta"] is None  # not a DPO model: no dpo_beta in its metadata
    decision = json.loads((out / "decision.json").read_text())
    assert decision["metric"] == "preference_accuracy" and decision["passed"] is False
    assert "preference_accuracy rose by 0 from the base" in decision["reason"]
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and {"base_output", "finetuned_output", "reference"} <= set(generations[0])
    report = (out / "report.md").read_text()
    assert "| preference_accuracy |" in report and "Implicit reward (fine-tuned vs base as reference" in report

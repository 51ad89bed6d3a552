"""Evaluate on preference pairs: log-likelihoods of chosen and rejected, the ranking metrics, DPO's
implicit reward, and the default gate (gate_metric auto: the implicit reward ranks more pairs right than chance, a
measure a length difference between the answers cannot fool)."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
        expected.append((*sides, len(chosen), len(rejected)))
    for batch_size in (1, 4):  # padded batches score the same as one sequence at a time
        got = preference.pair_logps(loaded, pairs, max_seq_length=512, batch_size=batch_size)
        assert [(p.chosen_tokens, p.rejected_tokens) for p in got] == [e[2:] for e in expected]
        flat = [value for pair in got for value in pair[:2]]
        assert flat == pytest.approx([value for pair in expected for value in pair[:2]], rel=1e-4)


Score = preference.PairScore


def test_ranking_metrics_and_implicit_reward():
    base = [Score(-10.0, -12.0, 5, 4), Score(-8.0, -7.0, 4, 2), Score(-5.0, -5.5, 2, 2)]
    tuned = [Score(-9.0, -14.0, 5, 4), Score(-7.0, -8.0, 4, 2), Score(-6.0, -5.0, 2, 2)]
    # per token, tuned: -1.8 > -3.5, -1.75 > -4.0, -3.0 < -2.5
    assert preference.preference_metrics(tuned) == pytest.approx(
        {"preference_accuracy": 2 / 3, "preference_accuracy_normalized": 2 / 3, "preference_margin": (5 + 1 - 1) / 3,
         "chosen_logp": -22 / 3, "rejected_logp": -9.0})
    reward = preference.implicit_reward(base, tuned, beta=0.5)
    # margins: 0.5*((1)-(-2)) = 1.5, 0.5*((1)-(-1)) = 1.0, 0.5*((-1)-(0.5)) = -0.75
    assert reward["accuracy"] == pytest.approx(2 / 3) and reward["mean_margin"] == pytest.approx((1.5 + 1 - 0.75) / 3)
    assert preference.implicit_reward(base, base, None)["accuracy"] == 0.5  # every margin 0: each tie counts half
    assert math.isnan(preference.preference_metrics([])["preference_accuracy"])


@pytest.mark.parametrize("chosen_tokens, rejected_tokens", [(30, 10), (10, 30)])
def test_a_length_difference_fools_the_summed_accuracy_but_not_the_gate(chosen_tokens, rejected_tokens):
    """Every token costs about the same log-probability, so the sums follow the lengths; the model did learn to
    prefer the chosen answers (1 nat more per chosen answer, 1 nat less per rejected), which only the per-token
    accuracy and the implicit reward see."""
    per_token = -3.0
    base = [Score(per_token * chosen_tokens, per_token * rejected_tokens, chosen_tokens, rejected_tokens)] * 4
    tuned = [Score(b.chosen + 1.0 + 0.1 * chosen_tokens, b.rejected - 1.0, chosen_tokens, rejected_tokens)
             for b in base]
    longer_chosen = chosen_tokens > rejected_tokens
    for scores in (base, tuned):  # the sums say what the lengths say, before and after training
        assert preference.preference_metrics(scores)["preference_accuracy"] == (0.0 if longer_chosen else 1.0)
    assert preference.preference_metrics(tuned)["preference_accuracy_normalized"] == 1.0
    values = {side: {"implicit_reward_accuracy": preference.implicit_reward(base, scores, 0.1)["accuracy"]}
              for side, scores in (("base", base), ("finetuned", tuned))}
    decision = gate.decide(gate.Gate(gate.resolve_metric("auto", "preference"), None, 0.0),
                           values["base"], values["finetuned"])
    assert decision["passed"] and values["base"]["implicit_reward_accuracy"] == 0.5
    assert values["finetuned"]["implicit_reward_accuracy"] == 1.0


def test_auto_gate_is_the_implicit_reward_for_pairs_and_loss_otherwise():
    assert gate.resolve_metric("auto", "preference") == "implicit_reward_accuracy"
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
        assert set(metrics[side]) >= {"loss", "perplexity", "implicit_reward_accuracy", "preference_accuracy",
                                      "preference_accuracy_normalized", "preference_margin", "chosen_logp",
                                      "rejected_logp"}
    assert metrics["deltas"]["preference_accuracy"] == 0.0
    assert metrics["implicit_reward"]["accuracy"] == 0.5 and metrics["implicit_reward"]["mean_margin"] == 0.0
    assert metrics["base"]["implicit_reward_accuracy"] == metrics["finetuned"]["implicit_reward_accuracy"] == 0.5
    assert metrics["implicit_reward"]["beta"] is None  # not a DPO model: no dpo_beta in its metadata
    decision = json.loads((out / "decision.json").read_text())
    assert decision["metric"] == "implicit_reward_accuracy" and decision["passed"] is False
    assert "implicit_reward_accuracy rose by 0 from the base" in decision["reason"]
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and {"base_output", "finetuned_output", "reference"} <= set(generations[0])
    report = (out / "report.md").read_text()
    assert "| preference_accuracy |" in report and "Implicit reward (fine-tuned vs base as reference" in report
    assert "`gate_metric: auto` reads the first" in report


def _length_biased_pairs(folder, longer: str):
    """The sample pairs with one side said three times over, as careful answers against curt ones (or the reverse)."""
    from maap_finetune.data.prepared import write_metadata

    rows = []
    for line in (Path(__file__).resolve().parents[2] / "data" / "sample" / "preference.jsonl").read_text().splitlines():
        row = json.loads(line)
        sides = {"chosen": row["preferred_output"], "rejected": row["non_preferred_output"]}
        text = sides[longer][0]["content"]
        sides[longer] = [{"role": "assistant", "content": " ".join([text] * 3)}]
        rows.append({"prompt": row["input"]["messages"], **sides})
    splits = {"test": rows[:12], "validation": rows[12:20], "train": rows[20:]}
    folder.mkdir(parents=True)
    for name, split in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split), encoding="utf-8")
    write_metadata(folder, task="preference", format="preference",
                   splits={n: {"file": f"{n}.jsonl", "rows": len(s)} for n, s in splits.items()},
                   label_set=None, templates={}, source={})
    return folder


@pytest.mark.parametrize("longer", ["chosen", "rejected"])
def test_dpo_on_length_biased_pairs_passes_the_default_gate(longer, tmp_path, mlflow_tracking, tiny_model_dir,
                                                            monkeypatch):
    """A real DPO run on pairs whose chosen answer is three times longer (or shorter) than the rejected one: the
    summed accuracy is fixed by the lengths for base and tuned alike, so gating on it would refuse a model that
    learned; the default gate reads the implicit reward and registers it."""
    from tests.finetune.test_preference import _dpo_run

    data = _length_biased_pairs(tmp_path / "pairs", longer)
    _dpo_run(tmp_path / "train", data, tiny_model_dir, monkeypatch, learning_rate=0.005, max_steps=20,
             logging_steps=10, eval_steps=20)
    out = run_evaluate(tmp_path, data, tmp_path / "train" / "mlflow_model", tiny_model_dir, max_new_tokens=4,
                       max_seq_length=256, sample_generations=1)
    metrics = json.loads((out / "metrics.json").read_text())
    summed = 0.0 if longer == "chosen" else 1.0
    assert metrics["base"]["preference_accuracy"] == summed
    assert metrics["base"]["implicit_reward_accuracy"] == 0.5
    assert metrics["finetuned"]["implicit_reward_accuracy"] >= 0.75, metrics["finetuned"]
    decision = json.loads((out / "decision.json").read_text())
    assert decision["metric"] == "implicit_reward_accuracy" and decision["passed"], decision["reason"]

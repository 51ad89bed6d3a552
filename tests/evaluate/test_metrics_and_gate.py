"""Task metrics on hand-checked inputs, batched loss/generation invariance, and the gate rules."""

from __future__ import annotations

import math

import pytest

from maap_finetune.evaluation import gate, metrics


def test_qa_squad_normalization():
    result = metrics.generation_metrics("qa", ["The Eiffel Tower!", "Paris"], ["eiffel tower", "London"])
    assert result == {"exact_match": 0.5, "token_f1": 0.5}
    partial = metrics.qa_metrics(["red bike"], ["the red city bike"])
    assert partial["exact_match"] == 0.0
    assert partial["token_f1"] == pytest.approx(2 * 1.0 * (2 / 3) / (1.0 + 2 / 3))


def test_classification_uses_label_set_and_completion_template():
    result = metrics.generation_metrics(
        "classification",
        ["Label: positive", "neutral", "Label: negative"],
        ["Label: positive", "Label: negative", "Label: negative"],
        label_set=["negative", "positive"],
        templates={"completion": "Label: {label}"},
    )
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["invalid_predictions"] == 1.0
    # negative: P=1, R=1/2 -> F1 2/3; positive: F1 1 -> macro 5/6
    assert result["macro_f1"] == pytest.approx(5 / 6)


def test_ner_entity_pairs_with_default_and_custom_formats():
    default = metrics.generation_metrics(
        "ner", ["person: Ada  Lovelace\nlocation: London", "none"], ["person: ada lovelace", "location: Paris"]
    )
    assert default == {"entity_precision": 0.5, "entity_recall": 0.5, "entity_f1": 0.5}
    custom = metrics.generation_metrics(
        "ner", ["PER - Ada; LOC - X"], ["PER - Ada; LOC - Y; ORG - Z"],
        templates={"entity": "{type} - {text}", "entity_separator": "; ", "no_entities": "nothing"},
    )
    assert custom["entity_precision"] == pytest.approx(1 / 2)
    assert custom["entity_recall"] == pytest.approx(1 / 3)


def test_translation_and_summarization_use_the_libraries():
    import sacrebleu
    from rouge_score import rouge_scorer

    preds, refs = ["the cat sat on a mat"], ["the cat sat on the mat"]
    result = metrics.generation_metrics("translation", preds, refs)
    assert result["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert 0 < result["bleu"] < 100 and 0 < result["chrf"] < 100
    summary = metrics.generation_metrics("summarization", ["the cats were running"], ["the cat ran"])
    expected = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True).score("the cat ran", "the cats were running")
    assert summary["rouge1"] == pytest.approx(expected["rouge1"].fmeasure)
    assert metrics.generation_metrics("chat", ["a"], ["b"]) == {}


def test_every_task_metric_has_a_direction():
    for task in metrics.TASKS:
        for name in metrics.task_metrics(task):
            assert metrics.higher_is_better(name) == (name not in ("loss", "perplexity", "rejected_logp"))


def test_batched_loss_and_generation_match_one_at_a_time(finetuned_mlflow_model, prepared_chat):
    from maap_finetune.evaluation import generation

    examples = generation.read_examples(prepared_chat / "test.jsonl", "messages", 6)
    loaded = generation.load_model(str(finetuned_mlflow_model / "model"),
                                   str(finetuned_mlflow_model / "components" / "tokenizer"), False)
    one = generation.compute_loss(loaded, examples, 2048, 1)
    batched = generation.compute_loss(loaded, examples, 2048, 4)
    assert batched.loss == pytest.approx(one.loss, rel=1e-5)
    assert batched.per_example_loss == pytest.approx(one.per_example_loss, rel=1e-4)
    # The loss equals the model's own loss on the reference tokens of one example.
    import torch

    ids, start, _ = generation.loss_sequence(loaded.tokenizer, examples[0], 2048)
    labels = torch.tensor([[-100] * start + ids[start:]])
    with torch.no_grad():
        expected = loaded.model(input_ids=torch.tensor([ids]), labels=labels).loss.item()
    assert one.per_example_loss[0] == pytest.approx(expected, rel=1e-5)
    outputs_one, _ = generation.generate(loaded, examples, 12, 2048, 1)
    outputs_batched, references = generation.generate(loaded, examples, 12, 2048, 4)
    assert outputs_batched == outputs_one
    assert references == [e.reference for e in examples]


def test_truncation_is_counted_and_empty_targets_skipped(finetuned_mlflow_model, prepared_chat):
    from maap_finetune.evaluation import generation

    examples = generation.read_examples(prepared_chat / "test.jsonl", "messages", 4)
    loaded = generation.load_model(str(finetuned_mlflow_model / "model"),
                                   str(finetuned_mlflow_model / "components" / "tokenizer"), False)
    result = generation.compute_loss(loaded, examples, 16, 2)
    assert result.truncated_examples == 4
    assert result.skipped_examples == 4  # 16 tokens hold no assistant token of these chats
    assert math.isnan(result.loss)


@pytest.mark.parametrize(
    ("rule", "base", "tuned", "passed", "fragment"),
    [
        (gate.Gate("loss", min_improvement=0.0), 3.0, 2.0, True, "improved by 1"),
        (gate.Gate("loss", min_improvement=0.0), 3.0, 3.0, False, "the gate needs more than 0"),
        (gate.Gate("loss", min_improvement=0.0), 3.0, 3.5, False, "got worse than the base"),
        (gate.Gate("loss", min_improvement=-1.0), 3.0, 3.5, True, "improved by -0.5"),
        (gate.Gate("loss", threshold=2.5), 3.0, 2.0, True, "<= threshold 2.5"),
        (gate.Gate("accuracy", threshold=0.8), 0.1, 0.7, False, "below the threshold 0.8"),
        (gate.Gate("accuracy", threshold=0.5, min_improvement=0.1), 0.5, 0.55, False, "needs more than 0.1"),
        (gate.Gate("accuracy", threshold=0.5, min_improvement=0.1), 0.4, 0.55, True, "more than 0.1"),
        (gate.Gate("loss", min_improvement=0.0), 3.0, float("nan"), False, "not a finite number"),
        (gate.Gate("none"), 3.0, 9.0, True, "gate off"),
    ],
)
def test_gate_rules(rule, base, tuned, passed, fragment):
    metric = rule.metric if rule.metric != "none" else "loss"
    decision = gate.decide(rule, {metric: base}, {metric: tuned})
    assert decision["passed"] is passed
    assert fragment in decision["reason"]
    assert decision["reason"].startswith("quality gate " + ("passed" if passed else "failed") if rule.metric != "none"
                                         else "quality gate off")


def test_gate_problems():
    assert gate.gate_problems(gate.Gate("loss", min_improvement=0.0), "chat") == []
    assert gate.gate_problems(gate.Gate("none"), "chat") == []
    assert "not measured for task 'chat'" in gate.gate_problems(gate.Gate("bleu", threshold=1.0), "chat")[0]
    assert "has no rule" in gate.gate_problems(gate.Gate("loss"), "chat")[0]
    assert gate.gate_problems(gate.Gate("bleu", threshold=10.0), "translation") == []


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_loss_and_generation_agree_with_cpu(finetuned_mlflow_model, prepared_chat):
    from maap_finetune.evaluation import generation

    examples = generation.read_examples(prepared_chat / "test.jsonl", "messages", 12)
    model_dir = str(finetuned_mlflow_model / "model")
    tokenizer_dir = str(finetuned_mlflow_model / "components" / "tokenizer")
    cpu = generation.load_model(model_dir, tokenizer_dir, False, device="cpu")
    gpu = generation.load_model(model_dir, tokenizer_dir, False)
    assert gpu.device.type == "cuda"
    cpu_loss = generation.compute_loss(cpu, examples, 2048, 4).loss
    gpu_loss = generation.compute_loss(gpu, examples, 2048, 4).loss
    assert gpu_loss == pytest.approx(cpu_loss, rel=0.02)  # bf16 weights and activations
    outputs, _ = generation.generate(gpu, examples, 16, 2048, 8)
    assert sum(bool(o) for o in outputs) >= len(outputs) // 2


def test_gate_names_why_a_loss_is_not_a_number():
    """0 tokens scored (every test row cut away) used to read "fine-tuned loss is nan"."""
    details = {"base": {"scored_tokens": 0, "skipped_examples": 79}, "finetuned": {"scored_tokens": 0,
                                                                                   "skipped_examples": 79}}
    decision = gate.decide(gate.Gate("loss", min_improvement=0.0), {"loss": float("nan")}, {"loss": float("nan")},
                           details)
    assert not decision["passed"]
    assert "0 tokens were scored (79 example(s) had nothing left to score" in decision["reason"]
    assert "max_seq_length" in decision["reason"] and "is nan" not in decision["reason"]
    diverged = gate.decide(gate.Gate("loss", threshold=2.0), {"loss": 3.0}, {"loss": float("nan")},
                           {"finetuned": {"scored_tokens": 120, "skipped_examples": 0}})
    assert "diverged" in diverged["reason"] and "nan" not in diverged["reason"].replace("NaN", "")

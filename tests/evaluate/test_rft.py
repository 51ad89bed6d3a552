"""Evaluate on rft prompts: both models' completions graded by the graders file, per-grader distributions,
scores beside each completion, MLflow metrics, and gate_metric auto on the top grader's mean."""

from __future__ import annotations

import json
import random

import pytest

from maap_finetune.common.errors import UserError
from maap_finetune.data.prepared import write_metadata
from maap_finetune.evaluation import gate
from tests.evaluate.fixtures import SAMPLE_DATA
from tests.evaluate.test_evaluate import run_evaluate

GRADERS = {"type": "multi", "name": "reward", "calculate_output": "0.5 * mentions + 0.5 * length", "graders": {
    "mentions": {"type": "string_check", "name": "mentions", "input": "{{sample.output_text}}",
                 "reference": "{{item.keyword}}", "operation": "ilike"},
    "length": {"type": "python", "name": "length",
               "source": "def grade(sample, item):\n    return min(len(sample['output_text']), 40) / 40\n"},
}}


def by_hand(output: str, keyword: str) -> dict[str, float]:
    mentions = float(keyword.lower() in output.lower())
    length = min(len(output), 40) / 40
    return {"mentions": mentions, "length": length, "reward": 0.5 * mentions + 0.5 * length}


@pytest.fixture(scope="module")
def prepared_rft(tmp_path_factory):
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(42).shuffle(rows)
    folder = tmp_path_factory.mktemp("rft")
    prompts = [{"messages": row["messages"][:-1], "keyword": "the"} for row in rows[:6]]
    for name, split in (("test", prompts), ("validation", prompts[:1]), ("train", prompts[:1])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split), encoding="utf-8")
    write_metadata(folder, task="rft", format="rft", templates={}, source={"file": "fixture"},
                   splits={name: {"file": f"{name}.jsonl", "rows": n} for name, n in
                           (("test", 6), ("validation", 1), ("train", 1))})
    graders = folder.parent / "graders.json"
    graders.write_text(json.dumps(GRADERS), encoding="utf-8")
    return folder, graders


def test_rft_grades_both_models_and_gates_on_the_top_grader(tmp_path, mlflow_tracking, prepared_rft,
                                                           finetuned_mlflow_model, tiny_model_dir):
    import mlflow

    folder, graders = prepared_rft
    out = run_evaluate(tmp_path, folder, finetuned_mlflow_model, tiny_model_dir, graders=graders,
                       max_new_tokens=16, parity_prompts=0)
    metrics = json.loads((out / "metrics.json").read_text())
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 6 and "loss" not in metrics["base"]
    for side in ("base", "finetuned"):
        expected = [by_hand(g[f"{side}_output"], "the") for g in generations]
        for generation, scores in zip(generations, expected):
            assert generation[f"{side}_scores"] == pytest.approx(scores)
        mean = sum(e["reward"] for e in expected) / 6
        assert metrics[side]["grader_score"] == pytest.approx(mean)
        assert metrics[side]["grader/mentions"] == pytest.approx(sum(e["mentions"] for e in expected) / 6)
        dist = metrics["graders"]["per_grader"]["reward"][side]
        assert dist["mean"] == pytest.approx(mean) and sum(dist["histogram"]["counts"]) == 6
        assert dist["histogram"]["edges"][0] == 0.0 and dist["histogram"]["edges"][-1] == 1.0
    assert metrics["graders"]["per_grader"]["length"]["type"] == "python"
    assert generations[0]["reference"] == '{"keyword": "the"}'

    decision = json.loads((out / "decision.json").read_text())
    assert decision["metric"] == "grader_score"
    assert decision["passed"] == (metrics["finetuned"]["grader_score"] > metrics["base"]["grader_score"])
    report = (out / "report.md").read_text()
    assert "## Graders" in report and "| reward | multi |" in report and (out / "charts" / "grader_scores.png").is_file()

    [run] = mlflow.search_runs(experiment_ids=None, search_all_experiments=True, output_format="list")
    assert run.data.metrics["base_grader_score"] == pytest.approx(metrics["base"]["grader_score"])
    assert run.data.metrics["finetuned_grader/reward_p50"] == pytest.approx(
        metrics["graders"]["per_grader"]["reward"]["finetuned"]["p50"])


def test_rft_needs_graders_and_rows_holding_their_fields(tmp_path, mlflow_tracking, prepared_rft,
                                                         finetuned_mlflow_model, tiny_model_dir):
    folder, graders = prepared_rft
    with pytest.raises(UserError, match=r"the test data is rft .*give graders"):
        run_evaluate(tmp_path, folder, finetuned_mlflow_model, tiny_model_dir, parity_prompts=0)
    broken = tmp_path / "graders.json"
    broken.write_text(json.dumps({**GRADERS, "graders": {**GRADERS["graders"], "mentions": {
        **GRADERS["graders"]["mentions"], "reference": "{{item.topic}}"}}}), encoding="utf-8")
    with pytest.raises(UserError, match=r"test.jsonl:1: field 'topic' missing, read by grader 'mentions'"):
        run_evaluate(tmp_path, folder, finetuned_mlflow_model, tiny_model_dir, graders=broken, parity_prompts=0)


def test_auto_gate_is_the_grader_score_for_rft():
    assert gate.resolve_metric("auto", "rft") == "grader_score"
    assert gate.gate_problems(gate.Gate("loss", min_improvement=0.0), "rft") == [
        "gate_metric 'loss' is not measured for task 'rft'; choose one of grader_score or none"]


def test_rft_parity_reference_is_teacher_forced_on_the_tuned_models_greedy_tokens(
        tmp_path, mlflow_tracking, prepared_rft, finetuned_mlflow_model, tiny_model_dir):
    """rft rows hold no answer, so Export ONNX's teacher-forced reference continues each prompt with the tuned
    model's own greedy tokens (the generation entry's): scored positions are exactly those tokens."""
    from maap_finetune.evaluation import parity_reference

    folder, graders = prepared_rft
    out = run_evaluate(tmp_path, folder, finetuned_mlflow_model, tiny_model_dir, graders=graders, max_new_tokens=8,
                       parity_prompts=3, parity_max_new_tokens=6, max_seq_length=256, sample_generations=0)
    reference = json.loads((out / parity_reference.REFERENCE_FILE).read_text())
    assert reference["teacher_forced_on"] == parity_reference.ON_GREEDY_TOKENS
    assert [e["line"] for e in reference["teacher_forced"]] == [g["line"] for g in reference["generation"]] == [1, 2, 3]
    for generated, forced in zip(reference["generation"], reference["teacher_forced"]):
        tokens = generated["tokens"]
        assert 0 < len(tokens) <= 6
        assert forced["ids"] == generated["prompt_ids"] + tokens and forced["start"] == len(generated["prompt_ids"])
        assert len(forced["top1"]) == len(forced["nll"]) == len(tokens)
        assert forced["top1"] == tokens  # greedy: PyTorch's own top-1 at each scored position is the token it chose
        assert all(nll >= 0 for nll in forced["nll"])

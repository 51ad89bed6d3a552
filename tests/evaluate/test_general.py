"""General ability: drift on the base model's own continuations of the general prompts, the user's general_data,
and the gate limits (max_general_drift, max_benchmark_drop) joined to the task gate."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from maap_finetune.common.errors import ConfigErrors, UserError
from maap_finetune.evaluation import gate, general
from tests.evaluate.fixtures import save_chat_model, session_cached, train_tiny
from tests.evaluate.test_evaluate import run_evaluate

PROMPTS = Path(__file__).resolve().parents[2] / "data" / "general_prompts.jsonl"


def test_the_general_prompts_are_many_and_diverse():
    prompts = general.read_prompts(PROMPTS)
    categories = Counter(json.loads(line)["category"] for line in PROMPTS.read_text(encoding="utf-8").splitlines())
    assert len(prompts) >= 50 and len(set(prompts)) == len(prompts)
    assert set(categories) == {"facts", "arithmetic", "code", "instructions", "languages"}
    assert min(categories.values()) >= 10


def test_the_base_loss_from_its_generation_equals_teacher_forcing_and_a_copy_of_it_does_not_drift(tiny_model_dir):
    from maap_finetune.evaluation.generation import load_model

    loaded = load_model(str(tiny_model_dir), str(tiny_model_dir), False, device="cpu")
    prompts = general.read_prompts(PROMPTS)[:12]
    reference = general.base_reference(loaded, prompts, max_new_tokens=8, token_budget=256)
    assert all(0 < len(s) - start <= 8 for s, start in zip(reference.sequences, reference.starts))
    forced = general.score(loaded, reference, token_budget=64)  # other batches than the generation's
    assert forced["agreement"] == 1.0 and forced["scored_tokens"] == reference.base_scores["scored_tokens"]
    assert forced["drift_loss"] == pytest.approx(reference.base_scores["drift_loss"], rel=1e-4)
    summary = general.drift_summary(reference.base_scores, forced)
    assert summary["drift_relative"] == pytest.approx(0.0, abs=1e-4) and summary["agreement"] == 1.0


def _decision(drift: float, passed: bool = True):
    """A task decision as gate.decide writes it, and the general figures of a run that drifted `drift`."""
    task = {"passed": passed, "metric": "loss",
            "reason": "quality gate passed: loss improved by 1 over the base (5 -> 4), more than 0" if passed
            else "quality gate failed: loss got worse than the base (4 -> 5); the gate needs an improvement of more "
                 "than 0"}
    return task, {"drift": {"drift_relative": drift}}


def test_limits_join_the_task_gate_and_name_what_was_exceeded_and_by_how_much():
    decision, figures = _decision(drift=0.8)
    refused = gate.apply_general_limits(decision, figures, max_drift=0.5, max_drop=None)
    assert not refused["passed"]
    assert refused["reason"].startswith("quality gate failed: general ability: general drift +80.0%")
    assert "over the limit max_general_drift +50.0%" in refused["reason"] and "task: loss improved by 1" in refused["reason"]
    (limit,) = refused["general_limits"]
    assert limit["limit"] == "max_general_drift" and limit["exceeded_by"] == pytest.approx(0.3)

    decision, figures = _decision(drift=0.2)
    kept = gate.apply_general_limits(decision, figures, max_drift=0.5, max_drop=None)
    assert kept["passed"] and "general drift +20.0% (loss on the base's own continuations" in kept["reason"]

    benchmarks = {"arc_local": {"metric": "acc", "base": 0.6, "finetuned": 0.5, "drop": 0.1}}
    decision = {"passed": True, "metric": "loss", "reason": "quality gate passed: loss improved"}
    refused = gate.apply_general_limits(decision, {"benchmarks": benchmarks}, max_drift=0.5, max_drop=0.05)
    assert not refused["passed"] and "arc_local acc 0.6 -> 0.5 (a drop of 0.1)" in refused["reason"]
    assert refused["general_limits"][0]["exceeded_by"] == pytest.approx(0.05)
    # A drift that is not a number cannot pass; a task failure stays the first reason; the gate off turns them off.
    assert not gate.apply_general_limits(*_decision(drift=math.nan), max_drift=0.5, max_drop=None)["passed"]
    failed = gate.apply_general_limits(*_decision(drift=0.9, passed=False), max_drift=0.5, max_drop=None)
    assert failed["reason"].startswith("quality gate failed: loss got worse") and "general drift +90.0%" in failed["reason"]
    off = {"passed": True, "metric": None, "reason": "quality gate off"}
    assert gate.apply_general_limits(off, {"drift": {"drift_relative": 9.0}}, 0.5, 0.05) is off


def test_a_general_data_file_in_a_wrong_format_is_one_line_before_any_model_loads(tmp_path, prepared_chat,
                                                                                   untrained_mlflow_model,
                                                                                   tiny_model_dir):
    from tests.helpers import argv_from_spec, load_entry

    bad = tmp_path / "general.jsonl"
    bad.write_text('{"text": "fine"}\n', encoding="utf-8")
    assert general.general_data_format(bad) == "text"
    bad.write_text('{"prompt": "x", "completion": "y"}\n', encoding="utf-8")
    with pytest.raises(UserError, match=r"general_data .*general.jsonl, line 1: neither a 'text' nor a 'messages'"):
        general.general_data_format(bad)
    csv = tmp_path / "general.csv"
    csv.write_text("text\nhello\n", encoding="utf-8")
    argv = argv_from_spec("evaluate", test_data=prepared_chat, mlflow_model=untrained_mlflow_model,
                          model_path=tiny_model_dir, evaluation=tmp_path / "out", general_data=csv)
    with pytest.raises(ConfigErrors) as caught:
        load_entry("evaluate").parse_args(argv)
    assert caught.value.problems == [
        f"general_data {csv}: expected a .jsonl file, got '.csv'; give a .jsonl file whose rows have a 'text' string "
        "(plain text) or a 'messages' list ending with an assistant turn (chat)"]


@pytest.fixture(scope="session")
def destroyed_mlflow_model(tmp_path_factory, tiny_model_dir, prepared_chat) -> Path:
    """Trained ten times too fast: it learns the task, and forgets what the base did with everything else."""

    def build():
        rows = [json.loads(line) for line in (prepared_chat / "train.jsonl").read_text().splitlines() if line.strip()]
        model, tokenizer = train_tiny(tiny_model_dir, rows, learning_rate=3e-2)
        path = tmp_path_factory.mktemp("destroyed") / "mlflow_model"
        return save_chat_model(model, tokenizer, path, metadata={"base_model": "tiny-phi3", "peft_method": "none"})

    return session_cached("destroyed_mlflow_model", build)


def test_a_destructive_learning_rate_is_refused_on_drift_while_the_task_loss_improves(
        tmp_path, mlflow_tracking, prepared_chat, destroyed_mlflow_model, tiny_model_dir):
    out = run_evaluate(tmp_path, prepared_chat, destroyed_mlflow_model, tiny_model_dir)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetuned"]["loss"] < metrics["base"]["loss"] - 1.0  # the task improved
    drift = metrics["general"]["drift"]
    assert drift["drift_relative"] > 0.5 and drift["agreement"] < 0.5
    decision = json.loads((out / "decision.json").read_text())
    assert not decision["passed"] and "over the limit max_general_drift +50.0%" in decision["reason"]
    (limit,) = decision["general_limits"]
    assert limit["exceeded_by"] == pytest.approx(drift["drift_relative"] - 0.5)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "## General ability: base vs tuned" in report and "**exceeded** by" in report
    assert (out / "charts" / "general.png").is_file()


def test_the_ordinary_fine_tune_passes_and_its_figures_reach_mlflow_and_the_tags(
        tmp_path, mlflow_tracking, prepared_chat, finetuned_mlflow_model, tiny_model_dir):
    import mlflow

    from maap_finetune.registry.tags import general_tags

    general_file = tmp_path / "general.jsonl"
    general_file.write_text("".join(json.dumps({"text": json.loads(line)["prompt"]}) + "\n"
                                    for line in PROMPTS.read_text(encoding="utf-8").splitlines()), encoding="utf-8")
    out = run_evaluate(tmp_path, prepared_chat, finetuned_mlflow_model, tiny_model_dir, general_data=general_file)
    metrics = json.loads((out / "metrics.json").read_text())
    drift, data = metrics["general"]["drift"], metrics["general"]["general_data"]
    assert 0 < drift["drift_relative"] < 0.5 and drift["scored_tokens"] > 0
    assert data["finetuned_loss"] > data["base_loss"] > 0  # the random base's text is not what it was tuned on
    decision = json.loads((out / "decision.json").read_text())
    assert decision["passed"] and "within max_general_drift +50.0%" in decision["reason"]
    run = mlflow.search_runs(output_format="list")[0]
    assert run.data.metrics["general_drift_relative"] == pytest.approx(drift["drift_relative"])
    assert run.data.metrics["general_data_loss_finetuned"] == pytest.approx(data["finetuned_loss"])
    tags = general_tags(metrics["general"])
    assert float(tags["general_drift_relative"]) == pytest.approx(drift["drift_relative"], rel=1e-3)
    assert set(tags) == {"general_drift_relative", "general_agreement", "general_data_loss", "general_data_loss_base"}


def test_evaluate_runs_a_local_lm_eval_task_for_base_and_tuned_and_gates_on_its_drop(
        tmp_path, mlflow_tracking, prepared_chat, destroyed_mlflow_model, tiny_model_dir):
    """Through Evaluate's inputs: the same examples for both models, the scores a hand count gives, and a drop
    over max_benchmark_drop named in the decision (the drift limit off, so the benchmark is what decides)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.tags import general_tags
    from tests.evaluate.lmeval_tasks import CHOICE_ROWS, write_choice_task
    from tests.evaluate.test_benchmarks import hand_count

    include = write_choice_task(tmp_path / "tasks")
    out = run_evaluate(tmp_path, prepared_chat, destroyed_mlflow_model, tiny_model_dir, general_eval_tasks="maap_choice",
                       general_eval_include=include, general_eval_limit=6, max_general_drift=None,
                       max_benchmark_drop=0.0)
    score = json.loads((out / "metrics.json").read_text())["general"]["benchmarks"]["maap_choice"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected = {side: hand_count(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer, CHOICE_ROWS)["acc_norm"]
                for side, path in (("base", tiny_model_dir), ("finetuned", destroyed_mlflow_model / "model"))}
    assert score["metric"] == "acc_norm" and score["limit"] == 6
    assert (score["base"], score["finetuned"]) == pytest.approx((expected["base"], expected["finetuned"]))
    decision = json.loads((out / "decision.json").read_text())
    (limit,) = decision["general_limits"]
    assert limit["task"] == "maap_choice" and limit["passed"] == (score["drop"] <= 0.0)
    assert decision["passed"] == limit["passed"]
    assert general_tags({"benchmarks": {"maap_choice": score}})["benchmark_maap_choice_acc_norm"]


def test_an_unknown_lm_eval_task_is_one_line_before_any_model_loads(tmp_path, prepared_chat, untrained_mlflow_model,
                                                                     tiny_model_dir):
    from tests.evaluate.lmeval_tasks import write_choice_task
    from tests.helpers import argv_from_spec, load_entry

    argv = argv_from_spec("evaluate", test_data=prepared_chat, mlflow_model=untrained_mlflow_model,
                          model_path=tiny_model_dir, evaluation=tmp_path / "out", general_eval_tasks="maap_choise",
                          general_eval_include=write_choice_task(tmp_path / "tasks"))
    with pytest.raises(ConfigErrors) as caught:
        load_entry("evaluate").parse_args(argv)
    (problem,) = caught.value.problems
    assert "general_eval_tasks" in problem and "maap_choise" in problem and "maap_choice" in problem

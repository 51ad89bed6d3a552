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


def test_the_base_reproduces_its_own_greedy_tokens_and_a_copy_of_it_does_not_drift(tiny_model_dir):
    from maap_finetune.evaluation.generation import load_model

    loaded = load_model(str(tiny_model_dir), str(tiny_model_dir), False, device="cpu")
    prompts = general.read_prompts(PROMPTS)[:12]
    reference = general.base_reference(loaded, prompts, max_new_tokens=8, token_budget=256)
    assert all(0 < len(s) - start <= 8 for s, start in zip(reference.sequences, reference.starts))
    own = general.score(loaded, reference, token_budget=64)  # other batches than the generation's: same figures
    assert own["agreement"] == 1.0 and own["scored_tokens"] == sum(len(s) - b for s, b in
                                                                    zip(reference.sequences, reference.starts))
    summary = general.drift_summary(own, general.score(loaded, reference, token_budget=4096))
    assert summary["drift_relative"] == pytest.approx(0.0, abs=1e-5) and summary["agreement"] == 1.0


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
    assert drift["drift_relative"] > 0.5 and drift["base_self_agreement"] == 1.0
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

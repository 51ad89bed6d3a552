"""The quality gate: may this fine-tuned model be registered?

Evaluate decides and writes `decision.json`; Register reads it and registers nothing when it failed.

Rules, on `metric` (its direction is known: lower is better for loss and perplexity, higher for
every other metric):
- `min_improvement` (when set): the fine-tuned model must beat the base by MORE than this, in the
  metric's own units (0 means "strictly better than the base"; a negative value tolerates a bounded
  regression).
- `threshold` (when set): the fine-tuned value must be at most (lower-is-better) or at least
  (higher-is-better) this.
- Both set: both must hold. `metric` "none" turns the gate off (it passes and says so).
A value that is not a finite number (no tokens scored, a diverged model) fails the gate, and the
reason names its cause (from the loss details when given), never a bare nan.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_finetune.evaluation.metrics import METRICS, higher_is_better, task_metrics

GATE_OFF = "none"
GATE_AUTO = "auto"  # see AUTO_METRICS; loss for every other task
# preference: DPO's implicit reward accuracy, which a length difference between the answers cannot fool
AUTO_METRICS = {"preference": "implicit_reward_accuracy", "rft": "grader_score"}


def resolve_metric(metric: str, task: str) -> str:
    if metric != GATE_AUTO:
        return metric
    return AUTO_METRICS.get(task, "loss")


DECISION_FILE = "decision.json"


@dataclass(frozen=True)
class Gate:
    metric: str
    threshold: float | None = None
    min_improvement: float | None = None


def gate_problems(gate: Gate, task: str) -> list[str]:
    """What is wrong with `gate` for `task` (empty when it can be applied)."""
    if gate.metric == GATE_OFF:
        return []
    problems = []
    if gate.metric not in METRICS:
        problems.append(f"gate_metric {gate.metric!r} is not a metric; choose one of {', '.join(METRICS)} or none")
    elif gate.metric not in task_metrics(task):
        problems.append(
            f"gate_metric {gate.metric!r} is not measured for task {task!r}; "
            f"choose one of {', '.join(task_metrics(task))} or none"
        )
    if gate.threshold is None and gate.min_improvement is None:
        problems.append(
            "the gate on %r has no rule: set gate_threshold and/or gate_min_improvement, or gate_metric none" % gate.metric
        )
    for name, value in (("gate_threshold", gate.threshold), ("gate_min_improvement", gate.min_improvement)):
        if value is not None and not math.isfinite(value):
            problems.append(f"{name} must be a finite number, got {value}")
    return problems


def not_finite_cause(metric: str, value: Any, details: dict[str, Any] | None) -> str:
    """Why a metric has no finite value, in words: 0 tokens scored, a diverged model, or not measured."""
    if value is None:
        return "was not measured"
    details = details or {}
    if metric in ("loss", "perplexity") and details.get("scored_tokens") == 0:
        skipped = details.get("skipped_examples")
        return ("has no value: 0 tokens were scored"
                + (f" ({skipped} example(s) had nothing left to score after truncation at max_seq_length)"
                   if skipped else "")
                + "; the test rows are longer than max_seq_length or their references are empty. Data Prep's "
                "report gives the lengths: raise max_seq_length or keep truncation prompt")
    if isinstance(value, float) and math.isinf(value):
        return "is infinite (the model diverged, or a reference token has probability 0)"
    if isinstance(value, float) and math.isnan(value):
        if metric in ("loss", "perplexity"):
            return "is not a number: the model's loss diverged (NaN logits)"
        return "is not a number: no test row could be scored for it"
    return f"is {value!r}, not a number"


def decide(gate: Gate, base: dict[str, float], finetuned: dict[str, float],
           details: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The decision record: passed, metric, values, rule and a one-line reason. `details` (per side,
    "base" and "finetuned": Evaluate's loss details) lets a reason name why a value is not finite."""
    if gate.metric == GATE_OFF:
        return {
            "passed": True,
            "metric": None,
            "values": {},
            "rule": {},
            "reason": "quality gate off (gate_metric none): registered without a check",
        }
    metric = gate.metric
    up = higher_is_better(metric)
    base_value, tuned_value = base.get(metric), finetuned.get(metric)
    improvement = None
    if _finite(base_value) and _finite(tuned_value):
        improvement = tuned_value - base_value if up else base_value - tuned_value
    record: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": up,
        "values": {"base": base_value, "finetuned": tuned_value, "improvement": improvement},
        "rule": {"threshold": gate.threshold, "min_improvement": gate.min_improvement},
    }
    failures: list[str] = []
    checks: list[str] = []
    if not _finite(tuned_value):
        failures.append(f"fine-tuned {metric} {not_finite_cause(metric, tuned_value, (details or {}).get('finetuned'))}"
                        " (not a finite number)")
    else:
        if gate.threshold is not None:
            ok = tuned_value >= gate.threshold if up else tuned_value <= gate.threshold
            text = f"fine-tuned {metric} {_fmt(tuned_value)} {'>=' if up else '<='} threshold {_fmt(gate.threshold)}"
            if ok:
                checks.append(text)
            else:
                failures.append(
                    f"fine-tuned {metric} {_fmt(tuned_value)} is {'below' if up else 'above'} the threshold "
                    f"{_fmt(gate.threshold)}"
                )
        if gate.min_improvement is not None:
            if improvement is None:
                failures.append(f"base {metric} {not_finite_cause(metric, base_value, (details or {}).get('base'))} "
                                "(not a finite number), so no improvement can be measured")
            elif improvement > gate.min_improvement:
                checks.append(
                    f"{metric} improved by {_fmt(improvement)} over the base ({_fmt(base_value)} -> "
                    f"{_fmt(tuned_value)}), more than {_fmt(gate.min_improvement)}"
                )
            else:
                failures.append(
                    f"{metric} {'rose' if up else 'fell'} by {_fmt(improvement)} from the base ({_fmt(base_value)} -> "
                    f"{_fmt(tuned_value)}); the gate needs more than {_fmt(gate.min_improvement)}"
                    if improvement >= 0
                    else f"{metric} got worse than the base ({_fmt(base_value)} -> {_fmt(tuned_value)}); the gate "
                    f"needs an improvement of more than {_fmt(gate.min_improvement)}"
                )
    record["passed"] = not failures
    record["reason"] = (
        "quality gate passed: " + "; ".join(checks) if not failures else "quality gate failed: " + "; ".join(failures)
    )
    return record


def apply_general_limits(decision: dict[str, Any], general: dict[str, Any], max_drift: float | None,
                         max_drop: float | None) -> dict[str, Any]:
    """The decision with the general-ability limits joined: a model that improves the task but drifts more than
    `max_drift` (relative) on general text, or loses more than `max_drop` (absolute) on any benchmark, fails, and
    `limits` names each limit, its value and by how much it was exceeded. With the gate off they are off too."""
    if decision["metric"] is None:
        return decision
    limits, failures, checks = [], [], []
    drift = (general.get("drift") or {}).get("drift_relative")
    if max_drift is not None and drift is not None:
        exceeded = not _finite(drift) or drift > max_drift
        limits.append({"limit": "max_general_drift", "allowed": max_drift, "value": drift, "passed": not exceeded,
                       "exceeded_by": drift - max_drift if exceeded and _finite(drift) else None})
        text = f"general drift {_pct(drift)} (loss on the base's own continuations of the general prompts)"
        (failures if exceeded else checks).append(
            f"{text} is over the limit max_general_drift {_pct(max_drift)}" if exceeded
            else f"{text} within max_general_drift {_pct(max_drift)}")
    for task, score in (general.get("benchmarks") or {}).items():
        if max_drop is None:
            break
        drop = score["drop"]
        exceeded = not _finite(drop) or drop > max_drop
        limits.append({"limit": "max_benchmark_drop", "task": task, "metric": score["metric"], "allowed": max_drop,
                       "value": drop, "passed": not exceeded,
                       "exceeded_by": drop - max_drop if exceeded and _finite(drop) else None})
        text = (f"{task} {score['metric']} {_fmt(score['base'])} -> {_fmt(score['finetuned'])} "
                f"(a drop of {_fmt(drop)})")
        (failures if exceeded else checks).append(
            f"{text} is over the limit max_benchmark_drop {_fmt(max_drop)}" if exceeded
            else f"{text} within max_benchmark_drop {_fmt(max_drop)}")
    if not limits:
        return decision
    record = {**decision, "general_limits": limits, "passed": decision["passed"] and not failures}
    if failures:
        prefix = "quality gate failed: " if decision["passed"] else decision["reason"] + "; "
        task_part = "; task: " + decision["reason"].split(": ", 1)[1] if decision["passed"] else ""
        record["reason"] = prefix + "general ability: " + "; ".join(failures) + task_part
    else:
        record["reason"] = decision["reason"] + "; general ability: " + "; ".join(checks)
    return record


def write_decision(folder: str | Path, decision: dict[str, Any]) -> Path:
    path = Path(folder) / DECISION_FILE
    path.write_text(json.dumps(decision, indent=2) + "\n", encoding="utf-8")
    return path


def read_decision(folder: str | Path) -> dict[str, Any]:
    """Evaluate's decision from its output `folder`, as Register and Export ONNX obey it (UserError naming the file)."""
    from maap_finetune.common.errors import UserError
    from maap_finetune.common.json_files import read_json_object

    path = Path(folder) / DECISION_FILE
    decision = read_json_object(path)
    if not isinstance(decision.get("passed"), bool):
        raise UserError(f"{path}: field 'passed' must be true or false")
    return decision


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _pct(value: float) -> str:
    return f"{value:+.1%}" if _finite(value) else str(value)

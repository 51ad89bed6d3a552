"""The checks of a sweep against Fine-Tune's inputs and Azure ML's rules, collected before anything is built."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pipelines.definition.inputs import FINETUNE_STEP, PIPELINE_INPUTS, convert_value, load_step_component
from pipelines.definition.sweep import (
    BAYESIAN_DISTRIBUTIONS,
    DISTRIBUTIONS,
    LIMITS,
    POLICIES,
    PRIMARY_METRICS,
    SAMPLING_ALGORITHMS,
    SweepSpec,
    POLICY_KEYS,
    input_name,
    limit_problem,
)


def _check_dimension(name: str, dim: dict[str, Any], input_spec) -> tuple[dict[str, Any], list[str]]:
    """The dimension with values converted to the input's type; problems found."""
    label = f"sweep {FINETUNE_STEP}.{name}"
    kind, dist_kind = dim["type"], DISTRIBUTIONS[dim["type"]][1]
    if input_spec.type not in ("integer", "number", "string", "boolean"):
        return dim, [f"{label}: {input_spec.type} inputs cannot be swept (literal inputs only)"]
    if dist_kind != "choice" and input_spec.type in ("string", "boolean"):
        return dim, [f"{label}: a {input_spec.type} input takes choice(...) only, not {kind}"]
    if input_spec.type == "integer" and dist_kind not in ("choice", "int"):
        return dim, [f"{label}: an integer input takes choice(...) or randint(...), so every value is whole; not {kind}"]
    try:
        if dist_kind == "choice":
            if not dim["values"]:
                return dim, [f"{label}: choice() needs at least one value"]
            return {**dim, "values": [convert_value(label, input_spec, v) for v in dim["values"]]}, []
        numbers = {k: float(v) for k, v in dim.items() if k != "type"}
    except ValueError as err:
        return dim, [str(err)]
    except TypeError:
        return dim, [f"{label}: {kind} takes numbers, got {dim}"]
    if dist_kind == "int":
        if numbers["upper"] < 1 or not numbers["upper"].is_integer():
            return dim, [f"{label}: randint(upper) needs a whole upper >= 1 (values 0 .. upper-1)"]
        ends = [0, int(numbers["upper"]) - 1]
    elif dist_kind in ("range", "log"):
        low, high = numbers["min_value"], numbers["max_value"]
        if low >= high:
            return dim, [f"{label}: {kind} needs min_value < max_value"]
        ends = [math.exp(low), math.exp(high)] if dist_kind == "log" else [low, high]
    else:
        if numbers["sigma"] <= 0:
            return dim, [f"{label}: {kind} needs sigma > 0"]
        ends = []  # unbounded: the trial's own parser checks each sampled value
    if "q" in numbers and numbers["q"] <= 0:
        return dim, [f"{label}: {kind} needs q > 0"]
    problems = []
    for end in ends:
        try:
            convert_value(label, input_spec, end)
        except ValueError as err:
            problems.append(f"{err} (the end of {kind}'s range)")
    return {**dim, **({k: numbers[k] for k in numbers} if dist_kind != "int" else {"upper": int(numbers["upper"])})}, problems


def check_sweep(spec: SweepSpec, inputs: Mapping[str, Any], step_inputs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every problem with `spec` given the pipeline's --set values; converts the search space in place."""
    problems: list[str] = []
    component_inputs = load_step_component(FINETUNE_STEP).inputs
    fed_by = {target: name for name, targets in PIPELINE_INPUTS.items() for target in targets}
    if not spec.search_space:
        problems.append("the sweep has no search_space: give --sweep-set name=choice(...) or search_space in --sweep")
    converted = {}
    for raw_name, dim in spec.search_space.items():
        name = input_name(raw_name)
        if "." in name or name not in component_inputs:
            problems.append(f"sweep {raw_name!r}: not an input of {FINETUNE_STEP}; {FINETUNE_STEP} inputs: {', '.join(component_inputs)}")
            continue
        pipeline_input = fed_by.get((FINETUNE_STEP, name))
        if pipeline_input and len(PIPELINE_INPUTS[pipeline_input]) > 1:
            steps = ", ".join(step for step, _ in PIPELINE_INPUTS[pipeline_input])
            problems.append(f"sweep {name!r}: the pipeline input {pipeline_input!r} feeds {steps}; only {FINETUNE_STEP} is swept, "
                            "so the steps would disagree: set it with --set instead")
            continue
        if name in inputs or name in (step_inputs.get(FINETUNE_STEP) or {}):
            problems.append(f"{name!r} is both set (--set) and swept: drop one of them")
            continue
        converted[name], found = _check_dimension(name, dim, component_inputs[name])
        problems += found
    spec.search_space = converted if not problems else spec.search_space
    return problems + _check_sampling(spec) + _check_objective(spec, step_inputs.get(FINETUNE_STEP) or {}) + _check_policy(spec)


def _check_sampling(spec: SweepSpec) -> list[str]:
    problems: list[str] = []
    algorithm = spec.algorithm
    if algorithm not in SAMPLING_ALGORITHMS:
        problems.append(f"sampling_algorithm must be one of {', '.join(SAMPLING_ALGORITHMS)}; got {algorithm!r}")
    kinds = {name: d["type"] for name, d in spec.search_space.items()}
    if algorithm == "grid" and any(kind != "choice" for kind in kinds.values()):
        problems.append("grid sampling needs choice(...) for every dimension (Azure ML's rule); use random or bayesian")
    if algorithm == "bayesian":
        odd = sorted(name for name, kind in kinds.items() if kind not in BAYESIAN_DISTRIBUTIONS)
        if odd:
            problems.append(f"bayesian sampling takes {', '.join(BAYESIAN_DISTRIBUTIONS)} only; not for {', '.join(odd)}")
    if spec.primary_metric not in PRIMARY_METRICS:
        problems.append(f"objective.primary_metric must be one of {', '.join(PRIMARY_METRICS)} (the losses Fine-Tune "
                        f"logs to MLflow); got {spec.primary_metric!r}")
    if spec.goal != "minimize":
        problems.append(f"objective.goal must be minimize for {spec.primary_metric} (a loss); got {spec.goal!r}")
    problems += [problem for key in LIMITS if (problem := limit_problem(key, getattr(spec, key)))]
    if spec.max_total_trials is None and spec.grid_size() is None:
        problems.append("limits.max_total_trials is needed when a dimension is not a choice (no grid to count)")
    if spec.seed is not None and (algorithm != "random" or isinstance(spec.seed, bool) or not isinstance(spec.seed, int)):
        problems.append("sampling_algorithm.seed is a whole number, for random sampling only")
    return problems


def _check_objective(spec: SweepSpec, finetune: Mapping[str, Any]) -> list[str]:
    """eval_loss as the primary metric needs evaluations during training and the best of them shipped."""
    from maap_finetune.common.cli import str2bool

    problems: list[str] = []

    def flag(name: str) -> Any:
        return finetune.get(name) if finetune.get(name) not in (None, "") else None

    if spec.primary_metric == "eval_loss":
        best = flag("load_best_model_at_end")
        if flag("eval_steps") is None or "eval_steps" in spec.search_space:
            problems.append("primary_metric eval_loss needs a fixed --set finetune.eval_steps=N (evaluations during "
                            "training); use final_eval_loss otherwise")
        if best is None or not (best if isinstance(best, bool) else str2bool(str(best))):
            problems.append("primary_metric eval_loss needs --set finetune.load_best_model_at_end=true: Azure ML ranks a "
                            "trial by the best eval_loss it logged, which is then the model the trial ships")
    return problems


def _check_policy(spec: SweepSpec) -> list[str]:
    policy = spec.early_termination
    if policy is None:
        return []
    if not isinstance(policy, Mapping) or policy.get("type") not in POLICIES:
        return [f"early_termination.type must be one of {', '.join(POLICIES)}; got {policy!r}"]
    problems = [f"early_termination ({policy['type']}): unknown {key!r}; keys: type, "
                f"{', '.join(sorted(POLICY_KEYS[policy['type']]))}" for key in sorted(set(policy) - {"type"} - POLICY_KEYS[policy['type']])]
    for key in ("evaluation_interval", "delay_evaluation"):
        value = policy.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            problems.append(f"early_termination.{key} must be a whole number >= 0; got {value!r}")
    if policy["type"] == "bandit":
        given = [k for k in ("slack_factor", "slack_amount") if policy.get(k) not in (None, 0, 0.0)]
        if len(given) != 1:
            problems.append("a bandit policy takes exactly one of slack_factor (a ratio) or slack_amount (in loss units)")
        elif not isinstance(policy[given[0]], (int, float)) or policy[given[0]] < 0:
            problems.append(f"early_termination.{given[0]} must be a number > 0")
    if spec.primary_metric != "eval_loss":
        problems.append(
            f"early termination acts on the primary metric each time a trial logs it (Azure ML counts each log as one "
            f"interval); {spec.primary_metric} is logged once, at a trial's end, so no trial could be stopped: set "
            "objective.primary_metric: eval_loss with finetune.eval_steps and finetune.load_best_model_at_end=true, "
            "or drop early_termination"
        )
    return problems

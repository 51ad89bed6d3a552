"""Hyperparameter sweeps of the Fine-Tune node: the sweep spec, its checks, and the Azure ML sweep node.

    python pipelines/submit.py --compute gpu-cluster --sweep sweep.yaml ...
    python pipelines/submit.py --local --sweep-set "learning_rate=choice(0.001,0.005)" --sweep-set "lora_r=choice(4,8)"
    python pipelines/submit.py --compute gpu-cluster --sweep sweep.yaml --sweep-limit trial_timeout=7200

A sweep file follows Azure ML's sweep job YAML (every key optional but `search_space`):

    search_space:
      learning_rate: {type: choice, values: [0.0001, 0.0002, 0.0005]}
      lora_r: {type: choice, values: [8, 16]}
      warmup_ratio: {type: uniform, min_value: 0.0, max_value: 0.1}
    sampling_algorithm: grid            # random | grid | bayesian (default: grid when every dimension is a choice)
    objective: {primary_metric: final_eval_loss, goal: minimize}
    limits: {max_total_trials: 6, max_concurrent_trials: 2, timeout: 86400, trial_timeout: 7200}   # seconds
    early_termination: {type: bandit, slack_factor: 0.1, evaluation_interval: 1, delay_evaluation: 2}

`--sweep-set name=expr` adds or replaces one dimension: choice(a,b,...), uniform(lo,hi), loguniform(lo,hi),
quniform(lo,hi,q), qloguniform(lo,hi,q), normal(mu,sigma), lognormal(mu,sigma), qnormal(mu,sigma,q),
qlognormal(mu,sigma,q), randint(upper) ([a,b,...] is short for choice), as azure.ai.ml.sweep defines them (loguniform's bounds are natural
logs). A name is a Fine-Tune input (`lora_r`, `warmup_ratio`, or `finetune.warmup_ratio`). `--sweep-limit key=N`
sets or replaces one of `limits` (max_total_trials, max_concurrent_trials, timeout, trial_timeout).

`timeout` ends the whole sweep after that many seconds, `trial_timeout` each trial (azure.ai.ml.sweep.SweepJobLimits).
Both are whole seconds >= 60: the SDK raises a shorter one to 60 s without a word (the service would read it as days).

The primary metric is what each trial logs to its MLflow run and the sweep minimizes:
- `final_eval_loss` (default): the validation loss of the weights that ship, logged once per trial.
- `eval_loss`: logged at every `finetune.eval_steps` evaluation. Azure ML ranks a trial by the best value it
  logged, and its early-termination policy counts each log as one interval (docs: "Each time the training
  script logs the primary metric counts as one interval"), so `eval_loss` needs `finetune.eval_steps` and
  `finetune.load_best_model_at_end=true` (the trial's best evaluation is then the model it ships). An
  early-termination policy needs `eval_loss`: on `final_eval_loss` it could never stop a trial.

`pipelines/sweep_local.py` runs the same sweep node on this machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STEP = "finetune"
PRIMARY_METRICS = ("final_eval_loss", "eval_loss")
SAMPLING_ALGORITHMS = ("random", "grid", "bayesian")
POLICIES = ("bandit", "median_stopping")
# name -> (constructor keywords in order, kind); kinds: choice, range (bounds), log (bounds are logs), open, int
DISTRIBUTIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "choice": (("values",), "choice"),
    "uniform": (("min_value", "max_value"), "range"),
    "quniform": (("min_value", "max_value", "q"), "range"),
    "loguniform": (("min_value", "max_value"), "log"),
    "qloguniform": (("min_value", "max_value", "q"), "log"),
    "normal": (("mu", "sigma"), "open"),
    "qnormal": (("mu", "sigma", "q"), "open"),
    "lognormal": (("mu", "sigma"), "open"),
    "qlognormal": (("mu", "sigma", "q"), "open"),
    "randint": (("upper",), "int"),
}
# Azure ML's Bayesian sampling takes these only (how-to-tune-hyperparameters, "Bayesian sampling").
BAYESIAN_DISTRIBUTIONS = ("choice", "uniform", "quniform")
_EXPRESSION = re.compile(r"^\s*([a-z]+)\s*\((.*)\)\s*$", re.DOTALL)
_KEYS = {"search_space", "sampling_algorithm", "objective", "limits", "early_termination"}
LIMITS = ("max_total_trials", "max_concurrent_trials", "timeout", "trial_timeout")
MIN_TIMEOUT_S = 60  # azure.ai.ml's _get_floored_timeout raises anything shorter to 60 s
_POLICY_KEYS = {"bandit": {"slack_factor", "slack_amount", "evaluation_interval", "delay_evaluation"},
                "median_stopping": {"evaluation_interval", "delay_evaluation"}}


@dataclass
class SweepSpec:
    """What to sweep and how; `search_space` maps a Fine-Tune input to {"type": ..., <keywords>}."""

    search_space: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampling_algorithm: str | None = None  # None: grid when every dimension is a choice, else random
    seed: int | None = None  # random sampling's seed (Azure ML's RandomSamplingAlgorithm(seed=...))
    primary_metric: str = "final_eval_loss"
    goal: str = "minimize"
    max_total_trials: int | None = None  # None: the grid's size (grid, or random over choices only)
    max_concurrent_trials: int | None = None  # None: as Azure ML, all at once
    timeout: int | None = None  # seconds for the whole sweep; None: no limit
    trial_timeout: int | None = None  # seconds for each trial; None: no limit
    early_termination: dict[str, Any] | None = None  # {"type": "bandit"|"median_stopping", ...}

    @property
    def algorithm(self) -> str:
        if self.sampling_algorithm:
            return self.sampling_algorithm
        return "grid" if all(d["type"] == "choice" for d in self.search_space.values()) else "random"

    def grid_size(self) -> int | None:
        if not all(d["type"] == "choice" for d in self.search_space.values()):
            return None
        return math.prod(len(d["values"]) for d in self.search_space.values())

    @property
    def total_trials(self) -> int:
        return self.max_total_trials or self.grid_size() or 0


# ------------------------------------------------------------------------------------------
# Reading: sweep.yaml and --sweep-set


def _number(text: str) -> Any:
    """A literal from an expression: int, float, true/false, or the text itself (converted later by the input's type)."""
    text = text.strip().strip("'\"")
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def parse_expression(name: str, text: str) -> dict[str, Any]:
    """`choice(1e-4,2e-4)` -> {"type": "choice", "values": [0.0001, 0.0002]}; raise ValueError naming `name`.

    `[a,b]` is short for choice(a,b): it needs no quotes in a shell (make local ARGS="--sweep-set lora_r=[4,8]")."""
    stripped = text.strip()
    if stripped.startswith("[") and stripped.endswith("]"):
        text = f"choice({stripped[1:-1]})"
    match = _EXPRESSION.match(text)
    kind = match.group(1).lower() if match else None
    if kind not in DISTRIBUTIONS:
        raise ValueError(
            f"--sweep-set {name}={text}: expected one of {', '.join(f'{d}(...)' for d in DISTRIBUTIONS)}, "
            "e.g. learning_rate=choice(1e-4,2e-4)"
        )
    args = [_number(part) for part in match.group(2).split(",") if part.strip()]
    keywords, dist_kind = DISTRIBUTIONS[kind]
    if dist_kind == "choice":
        return {"type": kind, "values": args}
    if len(args) != len(keywords):
        raise ValueError(f"--sweep-set {name}={text}: {kind} takes {len(keywords)} numbers ({', '.join(keywords)})")
    return {"type": kind, **dict(zip(keywords, args))}


def _dimension_from_yaml(name: str, value: Any, where: str) -> dict[str, Any]:
    if isinstance(value, str):
        return parse_expression(name, value)
    if not isinstance(value, Mapping) or value.get("type") not in DISTRIBUTIONS:
        raise ValueError(f"{where}: search_space.{name}: expected {{type: choice|uniform|..., ...}} or 'choice(...)'")
    keywords = DISTRIBUTIONS[value["type"]][0]
    extra = set(value) - {"type", *keywords}
    missing = [k for k in keywords if k not in value]
    if extra or missing:
        raise ValueError(f"{where}: search_space.{name}: {value['type']} takes {', '.join(keywords)}"
                         + (f"; unknown {', '.join(sorted(extra))}" if extra else "")
                         + (f"; missing {', '.join(missing)}" if missing else ""))
    return {"type": value["type"], **{k: value[k] for k in keywords}}


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read a sweep YAML (see the module docstring); raise ConfigErrors naming the file and key."""
    import yaml

    from maap_finetune.common.errors import ConfigErrors, UserError

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"--sweep {path}: cannot read it ({err.strerror})") from None
    except yaml.YAMLError as err:
        raise UserError(f"--sweep {path}: not valid YAML: {err}") from None
    where = str(path)
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a mapping with search_space (and optionally sampling_algorithm, "
                        "objective, limits, early_termination)")
    problems = [f"{where}: unknown key {key!r}; keys: {', '.join(sorted(_KEYS))}" for key in sorted(set(data) - _KEYS)]
    spec = SweepSpec()
    space = data.get("search_space") or {}
    if not isinstance(space, Mapping):
        problems.append(f"{where}: search_space must map input names to distributions")
        space = {}
    for name, value in space.items():
        try:
            spec.search_space[str(name)] = _dimension_from_yaml(str(name), value, where)
        except ValueError as err:
            problems.append(str(err))
    algorithm = data.get("sampling_algorithm")
    if isinstance(algorithm, Mapping):  # {type: random, seed: 1}, as Azure ML's YAML allows
        spec.seed = algorithm.get("seed")
        algorithm = algorithm.get("type")
    spec.sampling_algorithm = algorithm
    objective = data.get("objective") or {}
    spec.primary_metric = objective.get("primary_metric", spec.primary_metric)
    spec.goal = str(objective.get("goal", spec.goal)).lower()
    limits = data.get("limits") or {}
    if not isinstance(limits, Mapping):
        problems.append(f"{where}: limits must map {', '.join(LIMITS)} to numbers")
        limits = {}
    unknown_limits = set(limits) - set(LIMITS)
    if unknown_limits:
        problems.append(f"{where}: limits: unknown {', '.join(sorted(map(str, unknown_limits)))}; "
                        f"limits: {', '.join(LIMITS)}")
    for key in LIMITS:
        setattr(spec, key, limits.get(key))
        problem = limit_problem(key, limits.get(key))
        if problem:
            problems.append(f"{where}: {problem}")
    spec.early_termination = data.get("early_termination")
    if problems:
        raise ConfigErrors(problems, header="invalid sweep file")
    return spec


def limit_problem(key: str, value: Any) -> str | None:
    """What is wrong with the value of limits.<key> (None: nothing, or not given)."""
    if value is None:
        return None
    whole = isinstance(value, int) and not isinstance(value, bool)
    if key in ("timeout", "trial_timeout"):
        if not whole or value < MIN_TIMEOUT_S:
            return (f"limits.{key} must be whole seconds >= {MIN_TIMEOUT_S} (Azure ML's SDK raises a shorter one to "
                    f"{MIN_TIMEOUT_S} s); got {value!r}")
    elif not whole or not 1 <= value <= 1000:
        return f"limits.{key} must be a whole number from 1 to 1000 (Azure ML's bounds); got {value!r}"
    return None


def _apply_sweep_limits(spec: SweepSpec, sweep_limits: Iterable[str]) -> list[str]:
    """Set spec's limits from --sweep-limit key=N items; the problems found."""
    problems = []
    for item in sweep_limits:
        key, sep, text = (part.strip() for part in item.partition("="))
        if not sep or key not in LIMITS:
            problems.append(f"--sweep-limit {item!r}: expected key=N with key one of {', '.join(LIMITS)}, "
                            "e.g. trial_timeout=7200")
            continue
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        problem = limit_problem(key, value)
        if problem:
            problems.append(f"--sweep-limit {item!r}: {problem}")
        setattr(spec, key, value)
    return problems


def sweep_from_args(sweep_file: str | None, sweep_sets: Iterable[str], sweep_limits: Iterable[str] = ()) -> SweepSpec | None:
    """The sweep from --sweep, --sweep-set (each adds or replaces a dimension) and --sweep-limit (each sets one of
    `limits`); None without --sweep and --sweep-set."""
    from maap_finetune.common.errors import ConfigErrors

    sweep_sets, sweep_limits = list(sweep_sets), list(sweep_limits)
    if not sweep_file and not sweep_sets:
        if sweep_limits:
            raise ConfigErrors([f"--sweep-limit {sweep_limits[0]!r}: there is no sweep to limit; add --sweep FILE or "
                                "--sweep-set name=expr"], header="invalid --sweep-limit")
        return None
    spec = load_sweep_file(sweep_file) if sweep_file else SweepSpec()
    problems = _apply_sweep_limits(spec, sweep_limits)
    for item in sweep_sets:
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            problems.append(f"--sweep-set {item!r}: expected name=expression, e.g. lora_r=choice(8,16)")
            continue
        try:
            spec.search_space[name.strip()] = parse_expression(name.strip(), text)
        except ValueError as err:
            problems.append(str(err))
    if problems:
        raise ConfigErrors(problems, header="invalid --sweep-set or --sweep-limit")
    return spec


# ------------------------------------------------------------------------------------------
# Checking against the Fine-Tune component and the rest of the settings


def input_name(name: str) -> str:
    """`finetune.lora_r` and `lora_r` both name Fine-Tune's input `lora_r`."""
    return name.split(".", 1)[1] if name.startswith(f"{STEP}.") else name


def swept_inputs(spec: SweepSpec | None) -> set[str]:
    return {input_name(name) for name in spec.search_space} if spec else set()


def _check_dimension(name: str, dim: dict[str, Any], input_spec) -> tuple[dict[str, Any], list[str]]:
    """The dimension with values converted to the input's type; problems found."""
    from pipelines.factory import convert_value

    label = f"sweep {STEP}.{name}"
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
    from maap_finetune.common.cli import str2bool
    from pipelines.factory import PIPELINE_INPUTS, load_step_component

    problems: list[str] = []
    component_inputs = load_step_component(STEP).inputs
    fed_by = {target: name for name, targets in PIPELINE_INPUTS.items() for target in targets}
    if not spec.search_space:
        problems.append("the sweep has no search_space: give --sweep-set name=choice(...) or search_space in --sweep")
    converted = {}
    for raw_name, dim in spec.search_space.items():
        name = input_name(raw_name)
        if "." in name or name not in component_inputs:
            problems.append(f"sweep {raw_name!r}: not an input of {STEP}; {STEP} inputs: {', '.join(component_inputs)}")
            continue
        pipeline_input = fed_by.get((STEP, name))
        if pipeline_input and len(PIPELINE_INPUTS[pipeline_input]) > 1:
            steps = ", ".join(step for step, _ in PIPELINE_INPUTS[pipeline_input])
            problems.append(f"sweep {name!r}: the pipeline input {pipeline_input!r} feeds {steps}; only {STEP} is swept, "
                            "so the steps would disagree: set it with --set instead")
            continue
        if name in inputs or name in (step_inputs.get(STEP) or {}):
            problems.append(f"{name!r} is both set (--set) and swept: drop one of them")
            continue
        converted[name], found = _check_dimension(name, dim, component_inputs[name])
        problems += found
    spec.search_space = converted if not problems else spec.search_space

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

    finetune = step_inputs.get(STEP) or {}

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
    problems += _check_policy(spec)
    return problems


def _check_policy(spec: SweepSpec) -> list[str]:
    policy = spec.early_termination
    if policy is None:
        return []
    if not isinstance(policy, Mapping) or policy.get("type") not in POLICIES:
        return [f"early_termination.type must be one of {', '.join(POLICIES)}; got {policy!r}"]
    problems = [f"early_termination ({policy['type']}): unknown {key!r}; keys: type, "
                f"{', '.join(sorted(_POLICY_KEYS[policy['type']]))}" for key in sorted(set(policy) - {"type"} - _POLICY_KEYS[policy['type']])]
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


# ------------------------------------------------------------------------------------------
# The Azure ML sweep node


def distribution(dim: Mapping[str, Any]):
    """The azure.ai.ml.sweep object for one dimension."""
    from azure.ai.ml import sweep

    classes = {"choice": sweep.Choice, "uniform": sweep.Uniform, "quniform": sweep.QUniform,
               "loguniform": sweep.LogUniform, "qloguniform": sweep.QLogUniform, "normal": sweep.Normal,
               "qnormal": sweep.QNormal, "lognormal": sweep.LogNormal, "qlognormal": sweep.QLogNormal,
               "randint": sweep.Randint}
    return classes[dim["type"]](**{k: v for k, v in dim.items() if k != "type"})


def termination_policy(policy: Mapping[str, Any] | None):
    from azure.ai.ml.sweep import BanditPolicy, MedianStoppingPolicy

    if policy is None:
        return None
    keywords = {k: v for k, v in policy.items() if k != "type"}
    return BanditPolicy(**keywords) if policy["type"] == "bandit" else MedianStoppingPolicy(**keywords)


def sampling(spec: SweepSpec):
    from azure.ai.ml.sweep import RandomSamplingAlgorithm

    if spec.algorithm == "random" and spec.seed is not None:
        return RandomSamplingAlgorithm(seed=spec.seed)
    return spec.algorithm


def sweep_node(node, spec: SweepSpec):
    """Turn the Fine-Tune command node into a sweep node (the DSL's `.sweep(...)`); call inside the pipeline
    function, before a downstream node reads its outputs: those become the best trial's, as Azure ML passes them."""
    from azure.ai.ml.entities._job.pipeline._io import PipelineInput

    for name, dim in spec.search_space.items():
        setattr(node.inputs, name, distribution(dim))
    for name, node_input in node.inputs.items():
        # Unbind pipeline inputs left unset: the SDK's validator cannot see through a sweep node that the
        # component input is optional, and would call the pipeline input required.
        bound = getattr(node_input, "_data", None)
        if isinstance(bound, PipelineInput) and bound.result() is None:
            setattr(node.inputs, name, None)
    swept = node.sweep(
        primary_metric=spec.primary_metric,
        goal=spec.goal,
        sampling_algorithm=sampling(spec),
        max_total_trials=spec.total_trials,
        max_concurrent_trials=spec.max_concurrent_trials,
        timeout=spec.timeout,
        trial_timeout=spec.trial_timeout,
        early_termination_policy=termination_policy(spec.early_termination),
    )
    swept.resources = node.resources
    swept.trial.distribution = node.distribution  # a sweep node has no distribution: its trial component carries it
    return swept

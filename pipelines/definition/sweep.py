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

`pipelines/local/sweep.py` runs the same sweep node on this machine.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.definition.inputs import FINETUNE_STEP

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
POLICY_KEYS = {"bandit": {"slack_factor", "slack_amount", "evaluation_interval", "delay_evaluation"},
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
    return name.split(".", 1)[1] if name.startswith(f"{FINETUNE_STEP}.") else name


def swept_inputs(spec: SweepSpec | None) -> set[str]:
    return {input_name(name) for name in spec.search_space} if spec else set()


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

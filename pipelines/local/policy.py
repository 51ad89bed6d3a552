"""Sampling and early termination for local sweeps, as Azure ML documents them.

Source: https://learn.microsoft.com/azure/machine-learning/how-to-tune-hyperparameters ("Sampling the
hyperparameter space", "Specify early termination policy"). The rules reproduced, for a trial whose
primary metric has been logged N times (each log is one *interval*):

- When a policy applies: at interval N when N >= delay_evaluation and N is a multiple of evaluation_interval
  (an evaluation_interval of 0, the SDK's default, is taken as 1). Each interval is evaluated once, when it arrives.
- A trial's *score at N* is the best value among its first N logs (the doc's "best metric at interval N").
- Bandit: the reference is the best score at N among all trials that reached N, itself included. The trial
  stops when its score is outside the slack: for goal maximize (the doc's example) below reference/(1+slack_factor)
  or reference - slack_amount; for minimize, the mirror image, above reference*(1+slack_factor) or
  reference + slack_amount (the doc gives no minimize example; this is our reading).
- Median stopping: the running average of a trial at N is the mean of its first N logs. The trial stops when its
  score at N is worse than the median of the running averages at N of all trials that reached N (itself
  included), provided another trial reached N.
Not reproduced: truncation selection (refused by pipelines/definition/sweep_check.py), Sobol random rule. The sweep's time
limits (timeout, trial_timeout) are applied by pipelines/local/sweep.py.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics
from collections.abc import Mapping, Sequence
from typing import Any


# ------------------------------------------------------------------------------------------
# Sampling


def draw(dim: Mapping[str, Any], rng: random.Random) -> Any:
    """One value of a dimension, as azure.ai.ml.sweep defines it (loguniform's bounds are natural logs)."""
    kind = dim["type"]
    if kind == "choice":
        return rng.choice(list(dim["values"]))
    if kind == "randint":
        return rng.randrange(int(dim["upper"]))
    if kind in ("uniform", "quniform", "loguniform", "qloguniform"):
        value = rng.uniform(dim["min_value"], dim["max_value"])
    else:
        value = rng.gauss(dim["mu"], dim["sigma"])
    if kind.removeprefix("q").startswith("log"):
        value = math.exp(value)
    if kind.startswith("q"):
        value = round(value / dim["q"]) * dim["q"]
    return value


def sample_trials(space: Mapping[str, Mapping[str, Any]], algorithm: str, total: int, seed: int | None) -> list[dict[str, Any]]:
    """The trials' hyperparameters, in the order they run.

    grid: every combination in order (the first `total`). random: independent draws; over choices only, distinct
    combinations while there are any left (a repeated trial would teach nothing). bayesian is not sampled here
    (run_sweep_step falls back to random)."""
    names = list(space)
    if algorithm == "grid":
        grid = itertools.product(*(space[name]["values"] for name in names))
        return [dict(zip(names, combo)) for combo in itertools.islice(grid, total)]
    rng = random.Random(seed)
    if all(space[name]["type"] == "choice" for name in names):
        grid = [dict(zip(names, combo)) for combo in itertools.product(*(space[n]["values"] for n in names))]
        picked = rng.sample(grid, min(total, len(grid)))
        return picked + [{name: draw(space[name], rng) for name in names} for _ in range(total - len(picked))]
    return [{name: draw(space[name], rng) for name in names} for _ in range(total)]


# ------------------------------------------------------------------------------------------
# Early termination


def best_value(values: Sequence[float], goal: str) -> float:
    return min(values) if goal == "minimize" else max(values)


def _worse(value: float, limit: float, goal: str) -> bool:
    return value > limit if goal == "minimize" else value < limit


def applies(interval: int, policy: Mapping[str, Any]) -> bool:
    every = max(1, int(policy.get("evaluation_interval") or 0))
    return interval >= int(policy.get("delay_evaluation") or 0) and interval % every == 0


def should_stop(policy: Mapping[str, Any], goal: str, own: Sequence[float], others: Sequence[Sequence[float]],
                interval: int) -> str | None:
    """Why the trial with logs `own` stops at `interval` (1-based), given the other trials' logs; None to go on."""
    if interval > len(own) or not applies(interval, policy):
        return None
    peers = [list(values[:interval]) for values in others if len(values) >= interval]
    score = best_value(own[:interval], goal)
    if policy["type"] == "bandit":
        reference = best_value([best_value(p, goal) for p in peers] + [score], goal)
        factor, amount = policy.get("slack_factor"), policy.get("slack_amount")
        if factor:
            limit = reference * (1 + factor) if goal == "minimize" else reference / (1 + factor)
            slack = f"slack_factor {factor}"
        else:
            limit = reference + amount if goal == "minimize" else reference - amount
            slack = f"slack_amount {amount}"
        if _worse(score, limit, goal):
            return (f"bandit at interval {interval}: best {score:.4f} is outside the {slack} of the best trial's "
                    f"{reference:.4f} (limit {limit:.4f})")
        return None
    if not peers:
        return None
    median = statistics.median([statistics.fmean(p) for p in peers] + [statistics.fmean(own[:interval])])
    if _worse(score, median, goal):
        return (f"median stopping at interval {interval}: best {score:.4f} is worse than the median {median:.4f} "
                f"of the running averages of {len(peers) + 1} trials")
    return None

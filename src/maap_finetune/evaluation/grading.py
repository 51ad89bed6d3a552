"""Evaluate on rft data: each model's test-split completions scored by the graders file Fine-Tune trained with.

`grade_outputs` returns every named grader's score per row (a multi's sub-graders and the top one);
`grade_values` the metrics Evaluate compares (`grader_score`, the top grader's mean, which `gate_metric:
auto` gates on, plus `grader/<name>` means); `grader_summary` each grader's distribution for base and
fine-tuned (mean, standard deviation, quantiles, a histogram), written to metrics.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
HISTOGRAM_BINS = 10


def check_rows(graders, examples: Sequence[Any], path: Path) -> None:
    """Every test row holds the fields the graders read (Data Prep checks this too, when it had the file)."""
    from maap_finetune.common.errors import ConfigErrors

    problems = [p for ex in examples for p in graders.row_problems(ex.row, f"{path}:{ex.line}")]
    if problems:
        raise ConfigErrors(problems, header=f"{path}: test rows the graders cannot read")


def grade_outputs(graders, outputs: Sequence[str], examples: Sequence[Any], path: Path) -> dict[str, list[float]]:
    from maap_finetune.graders import Sample

    grades = graders.grade([Sample(o) for o in outputs], [ex.row for ex in examples],
                           where=[f"{path}:{ex.line}" for ex in examples])
    return {name: [g.scores[name] for g in grades] for name in graders.grader_names}


def grade_values(graders, scores: Mapping[str, list[float]]) -> dict[str, float]:
    values = {"grader_score": _mean(scores[graders.name])}
    values.update({f"grader/{name}": _mean(scores[name]) for name in graders.grader_names})
    return values


def distribution(values: Sequence[float], edges: Sequence[float]) -> dict[str, Any]:
    import numpy as np

    if not values:
        return {"count": 0}
    array = np.asarray(values, dtype=float)
    counts, _ = np.histogram(array, bins=np.asarray(edges))
    return {
        "count": int(array.size), "mean": float(array.mean()), "std": float(array.std()),
        "min": float(array.min()), "max": float(array.max()),
        **{f"p{round(q * 100)}": float(np.quantile(array, q)) for q in QUANTILES},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


def histogram_edges(*sides: Sequence[float]) -> list[float]:
    """Shared bins for both models: [0, 1] in tenths when every score lies there, else the scores' span."""
    every = [v for side in sides for v in side]
    low, high = (min(every), max(every)) if every else (0.0, 1.0)
    if low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    if high == low:
        high = low + 1.0
    step = (high - low) / HISTOGRAM_BINS
    return [low + i * step for i in range(HISTOGRAM_BINS + 1)]


def grader_summary(graders, base: Mapping[str, list[float]], tuned: Mapping[str, list[float]]) -> dict[str, Any]:
    per_grader = {}
    for name in graders.grader_names:
        edges = histogram_edges(base[name], tuned[name])
        sides = {"base": distribution(base[name], edges), "finetuned": distribution(tuned[name], edges)}
        per_grader[name] = {"type": graders.types[name], **sides,
                            "delta_mean": sides["finetuned"].get("mean", math.nan) - sides["base"].get("mean", math.nan)}
    return {"file": Path(graders.file).name, "top": graders.name, "per_grader": per_grader}


def distribution_metrics(summary: Mapping[str, Any]) -> dict[str, float]:
    """MLflow metrics of each grader's spread (its mean is logged with the other metrics)."""
    out = {}
    for name, entry in summary["per_grader"].items():
        for side in ("base", "finetuned"):
            for stat in ("std", "p10", "p50", "p90"):
                if stat in entry[side]:
                    out[f"{side}_grader/{name}_{stat}"] = entry[side][stat]
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan

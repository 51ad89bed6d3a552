"""The evaluation report: Markdown and HTML side by side, plus PNG charts (matplotlib, Agg backend)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maap_finetune.evaluation.metrics import METRICS

CELL_LIMIT = 400  # characters of a prompt or output shown in a table cell


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, float, float, float, str]]:
    """(metric, base, fine-tuned, delta, verdict) for every metric measured on both models."""
    rows = []
    for name, base in metrics["base"].items():
        tuned = metrics["finetuned"].get(name)
        delta = metrics["deltas"].get(name)
        verdict = ""
        if name in METRICS and isinstance(delta, float) and math.isfinite(delta) and delta != 0:
            better = (delta > 0) == METRICS[name].higher_is_better
            verdict = "better" if better else "worse"
        elif delta == 0:
            verdict = "same"
        rows.append((name, base, tuned, delta, verdict))
    return rows


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _clip(text: str) -> str:
    text = text if len(text) <= CELL_LIMIT else text[:CELL_LIMIT] + "…"
    return text


def _md_cell(text: str) -> str:
    return _clip(text).replace("|", "\\|").replace("\r", "").replace("\n", "<br>") or " "


def implicit_reward_lines(metrics: dict[str, Any]) -> list[str]:
    """Preference runs: DPO's implicit reward of the fine-tuned model, the base as reference."""
    reward = metrics.get("implicit_reward")
    if not reward:
        return []
    beta = f"beta {reward['beta']}" if reward["beta"] is not None else "per unit of beta"
    tuned = metrics["finetuned"]
    return [f"- Implicit reward (fine-tuned vs base as reference, {beta}): ranks chosen above rejected in "
            f"{_num(reward['accuracy'])} of {reward['pairs']} pairs; mean margin {_num(reward['mean_margin'])}",
            "- Three ways to read the pairs (fine-tuned): implicit reward accuracy "
            f"{_num(tuned.get('implicit_reward_accuracy'))}, log-probability accuracy per token "
            f"{_num(tuned.get('preference_accuracy_normalized'))}, summed log-probability accuracy "
            f"{_num(tuned.get('preference_accuracy'))}. A sum falls with every token, so the last one follows the "
            "answers' lengths more than the model; `gate_metric: auto` reads the first."]


def general_rows(metrics: dict[str, Any]) -> list[tuple[str, Any, Any, str]]:
    """(what, base, fine-tuned, note) rows of the section "General ability: base vs tuned"."""
    general = metrics.get("general") or {}
    rows = []
    drift = general.get("drift")
    if drift:
        rows.append(("drift loss on the base's general continuations (nats/token)", drift["base_drift_loss"],
                     drift["finetuned_drift_loss"], f"{drift['drift_relative']:+.1%}"
                     if math.isfinite(drift["drift_relative"]) else str(drift["drift_relative"])))
        rows.append(("top-1 agreement with the base's greedy tokens", 1.0, drift["agreement"],
                     f"{drift['scored_tokens']} tokens"))
    if "general_data" in general:
        data = general["general_data"]
        rows.append((f"cross-entropy on general_data ({Path(data['file']).name})", data["base_loss"],
                     data["finetuned_loss"], f"{data['delta']:+.4f}"))
    for task, score in (general.get("benchmarks") or {}).items():
        rows.append((f"{task} {score['metric']} ({score['limit']} examples at most)", score["base"],
                     score["finetuned"], f"drop {score['drop']:.4f}"))
    return rows


def _general_markdown(metrics: dict[str, Any], decision: dict[str, Any]) -> list[str]:
    rows = general_rows(metrics)
    if not rows:
        return []
    lines = ["## General ability: base vs tuned", "", "| measure | base | fine-tuned | |", "|---|---:|---:|---|"]
    lines += [f"| {name} | {_num(base)} | {_num(tuned)} | {note} |" for name, base, tuned, note in rows]
    for limit in decision.get("general_limits", []):
        where = f" ({limit['task']})" if "task" in limit else ""
        lines.append(f"- `{limit['limit']}`{where}: {_num(limit['value'])} against {_num(limit['allowed'])}: "
                     + ("within" if limit["passed"] else f"**exceeded** by {_num(limit['exceeded_by'])}"))
    return lines + ["", "![general ability](charts/general.png)", ""]


def grader_rows(metrics: dict[str, Any]) -> list[tuple[str, str, float, float, float, float, float]]:
    """rft: (grader, type, base mean, fine-tuned mean, delta, base median, fine-tuned median) per grader."""
    graders = metrics.get("graders")
    if not graders:
        return []
    return [(name, entry["type"], entry["base"].get("mean"), entry["finetuned"].get("mean"), entry["delta_mean"],
             entry["base"].get("p50"), entry["finetuned"].get("p50"))
            for name, entry in graders["per_grader"].items()]


def _with_score(sample: dict, side: str) -> str:
    """A generation with its score (rft) appended, for the side-by-side table."""
    text = str(sample[f"{side}_output"])
    scores = sample.get(f"{side}_scores")
    if not scores:
        return text
    return text + "\n[" + ", ".join(f"{k} {_num(float(v))}" for k, v in scores.items()) + "]"


def grader_markdown(metrics: dict[str, Any]) -> list[str]:
    rows = grader_rows(metrics)
    if not rows:
        return []
    lines = ["## Graders", "", f"Scores of `{metrics['graders']['file']}` (top grader "
             f"`{metrics['graders']['top']}`) on each model's completions; metrics.json has every quantile "
             "and the histograms.", "", "| grader | type | base mean | fine-tuned mean | delta | base median | "
             "fine-tuned median |", "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {kind} | " + " | ".join(_num(v) for v in values) + " |" for name, kind, *values in rows]
    return lines + ["", "![grader scores](charts/grader_scores.png)", ""]


def write_markdown(path: Path, metrics: dict[str, Any], decision: dict[str, Any], samples: Sequence[dict]) -> Path:
    lines = [
        "# Evaluation report",
        "",
        f"- Task: `{metrics['task']}`; test rows evaluated: {metrics['rows_evaluated']} of {metrics['rows_in_test_split']}",
        f"- Base model: `{metrics['lineage']['base_model']}`",
        f"- Quality gate: **{'passed' if decision['passed'] else 'failed'}** — {decision['reason']}",
        *implicit_reward_lines(metrics),
        "",
        "## Metrics",
        "",
        "| metric | base | fine-tuned | delta | |",
        "|---|---:|---:|---:|---|",
    ]
    for name, base, tuned, delta, verdict in metric_rows(metrics):
        lines.append(f"| {name} | {_num(base)} | {_num(tuned)} | {_num(delta)} | {verdict} |")
    lines += ["", "![metrics](charts/metrics.png)", "", "![per-example loss](charts/per_example_loss.png)", ""]
    lines += grader_markdown(metrics)
    lines += _general_markdown(metrics, decision)
    lines += ["## Generations", "", "| # | prompt | reference | base output | fine-tuned output |", "|---|---|---|---|---|"]
    for sample in samples:
        lines.append(
            f"| {sample['line']} | {_md_cell(sample['prompt'])} | {_md_cell(sample['reference'])} | "
            f"{_md_cell(_with_score(sample, 'base'))} | {_md_cell(_with_score(sample, 'finetuned'))} |"
        )
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_html(path: Path, metrics: dict[str, Any], decision: dict[str, Any], samples: Sequence[dict]) -> Path:
    esc = html.escape
    metric_html = "".join(
        f"<tr><td>{esc(name)}</td><td>{_num(base)}</td><td>{_num(tuned)}</td><td>{_num(delta)}</td>"
        f"<td class='{verdict}'>{verdict}</td></tr>"
        for name, base, tuned, delta, verdict in metric_rows(metrics)
    )
    sample_html = "".join(
        "<tr>" + "".join(
            f"<td>{esc(_clip(str(sample[key])))}</td>" for key in ("line", "prompt", "reference")
        ) + "".join(f"<td>{esc(_clip(_with_score(sample, side)))}</td>" for side in ("base", "finetuned")) + "</tr>"
        for sample in samples
    )
    grader_html = "".join(
        f"<tr><td>{esc(name)}</td><td>{esc(kind)}</td>" + "".join(f"<td>{_num(v)}</td>" for v in values) + "</tr>"
        for name, kind, *values in grader_rows(metrics))
    if grader_html:
        grader_html = ("<h2>Graders</h2><table><tr><th>grader</th><th>type</th><th>base mean</th><th>fine-tuned mean"
                       "</th><th>delta</th><th>base median</th><th>fine-tuned median</th></tr>" + grader_html +
                       "</table><img src='charts/grader_scores.png' alt='grader scores'>")
    verdict = "passed" if decision["passed"] else "failed"
    general = general_rows(metrics)
    general_html = "" if not general else (
        "<h2>General ability: base vs tuned</h2><table><tr><th>measure</th><th>base</th><th>fine-tuned</th><th></th>"
        "</tr>" + "".join(f"<tr><td>{esc(name)}</td><td>{_num(base)}</td><td>{_num(tuned)}</td><td>{esc(note)}</td>"
                          "</tr>" for name, base, tuned, note in general)
        + "</table><img src=\"charts/general.png\" alt=\"general ability\">")
    document = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Evaluation report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; }} table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; white-space: pre-wrap; }}
.better {{ color: #1a7f37; }} .worse {{ color: #cf222e; }} .passed {{ color: #1a7f37; }} .failed {{ color: #cf222e; }}
</style></head><body>
<h1>Evaluation report</h1>
<p>Task <code>{esc(metrics['task'])}</code>; test rows evaluated: {metrics['rows_evaluated']} of
{metrics['rows_in_test_split']}; base model <code>{esc(str(metrics['lineage']['base_model']))}</code>.</p>
<p>Quality gate: <b class="{verdict}">{verdict}</b> — {esc(decision['reason'])}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>base</th><th>fine-tuned</th><th>delta</th><th></th></tr>{metric_html}</table>
<img src="charts/metrics.png" alt="metrics"> <img src="charts/per_example_loss.png" alt="per-example loss">
{grader_html}
{general_html}
<h2>Generations</h2>
<table><tr><th>#</th><th>prompt</th><th>reference</th><th>base output</th><th>fine-tuned output</th></tr>{sample_html}</table>
</body></html>
"""
    path.write_text(document, encoding="utf-8")
    return path


def write_charts(folder: Path, metrics: dict[str, Any], per_example: dict[str, Sequence[float | None]]) -> list[Path]:
    """charts/metrics.png (base vs fine-tuned per metric) and charts/per_example_loss.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = [n for n in metrics["base"] if n in METRICS and _plottable(metrics["base"][n], metrics["finetuned"].get(n))]
    paths = []
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(2.6 * max(1, len(names)), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = [metrics["base"][name], metrics["finetuned"][name]]
        ax.bar(["base", "fine-tuned"], values, color=["#8c959f", "#0969da"])
        arrow = "↑" if METRICS[name].higher_is_better else "↓"
        ax.set_title(f"{name} ({arrow} better)", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.suptitle(f"{metrics['task']}: base vs fine-tuned", fontsize=10)
    fig.tight_layout()
    paths.append(folder / "metrics.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for label, color in (("base", "#8c959f"), ("finetuned", "#0969da")):
        values = [v for v in per_example.get(label, []) if v is not None and math.isfinite(v)]
        if values:
            ax.hist(values, bins=min(20, max(5, len(values))), alpha=0.6, label=label, color=color)
    ax.set_xlabel("loss per test example (nats/token)")
    ax.set_ylabel("examples")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    else:  # rft: the prompts hold no answer to score a loss on
        ax.text(0.5, 0.5, "no loss measured", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    paths.append(folder / "per_example_loss.png")
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    if metrics.get("graders"):
        paths.append(_grader_chart(plt, folder, metrics["graders"]))
    general = [row for row in general_rows(metrics) if _plottable(row[1], row[2])]
    if general:
        paths.append(_general_chart(plt, folder, general))
    return paths


def _general_chart(plt, folder: Path, rows: list[tuple[str, Any, Any, str]]) -> Path:
    """charts/general.png: base vs fine-tuned per general-ability measure."""
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows), 3.2), squeeze=False)
    for ax, (name, base, tuned, note) in zip(axes[0], rows):
        ax.bar(["base", "fine-tuned"], [base, tuned], color=["#8c959f", "#0969da"])
        ax.set_title(f"{name}\n{note}", fontsize=8, wrap=True)
        ax.tick_params(labelsize=8)
    fig.suptitle("General ability: base vs tuned", fontsize=10)
    fig.tight_layout()
    path = folder / "general.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _grader_chart(plt, folder: Path, graders: dict[str, Any]) -> Path:
    """charts/grader_scores.png: each grader's score histogram, base against fine-tuned, on shared bins."""
    entries = list(graders["per_grader"].items())
    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.0), squeeze=False)
    for ax, (name, entry) in zip(axes[0], entries):
        for side, color in (("base", "#8c959f"), ("finetuned", "#0969da")):
            histogram = entry[side].get("histogram")
            if histogram:
                edges = histogram["edges"]
                ax.stairs(histogram["counts"], edges, label=side, color=color, fill=side == "base", alpha=0.6)
        ax.set_title(f"{name} ({entry['type']})", fontsize=9)
        ax.set_xlabel("score", fontsize=8)
        ax.tick_params(labelsize=8)
    axes[0][0].set_ylabel("test prompts")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    path = folder / "grader_scores.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _plottable(*values: Any) -> bool:
    return all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)

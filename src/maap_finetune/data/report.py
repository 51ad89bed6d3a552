"""The data report: row counts, rejections, duplicates, overlap, length statistics and a histogram."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maap_finetune.data.prepare import CHARS_PER_TOKEN, SPLIT_NAMES, PrepareResult, SplitStats
from maap_finetune.data.problems import KINDS, Problems

REPORT_JSON = "data_report.json"
REPORT_MD = "data_report.md"
HISTOGRAM_PNG = "length_histogram.png"
PROBLEMS_JSON = "problems.json"
PERCENTILES = (50, 90, 95, 99)


def length_summary(values, max_seq_length: int | None) -> dict[str, Any]:
    import numpy as np

    if len(values) == 0:
        return {"count": 0}
    data = np.frombuffer(values, dtype=np.uint32) if hasattr(values, "typecode") else np.asarray(values)
    summary: dict[str, Any] = {
        "count": int(data.size),
        "total": int(data.sum(dtype=np.int64)),
        "mean": round(float(data.mean()), 2),
        "min": int(data.min()),
        "max": int(data.max()),
    }
    for p in PERCENTILES:
        summary[f"p{p}"] = float(np.percentile(data, p))
    if max_seq_length is not None:
        summary["over_max_seq_length"] = int((data > max_seq_length).sum())
    return summary


def preference_lengths(stats: dict[str, SplitStats], tokens: bool) -> dict[str, Any]:
    """Chosen and rejected lengths per split, and how often chosen is the longer one: DPO's summed
    log-probabilities favour whichever side the data makes longer (length bias)."""
    import numpy as np

    out: dict[str, Any] = {"unit": "tokens" if tokens else "characters", "per_split": {}}
    for name in SPLIT_NAMES:
        split = stats[name]
        chosen, rejected = (split.chosen_tokens, split.rejected_tokens) if tokens else (
            split.chosen_chars, split.rejected_chars)
        c, r = np.frombuffer(chosen, dtype=np.uint32), np.frombuffer(rejected, dtype=np.uint32)
        pairs = int(c.size)
        out["per_split"][name] = {
            "pairs": pairs,
            "chosen": length_summary(chosen, None),
            "rejected": length_summary(rejected, None),
            "chosen_longer": int((c > r).sum()),
            "rejected_longer": int((c < r).sum()),
            "same_length": int((c == r).sum()),
            "chosen_longer_ratio": round(float((c > r).mean()), 4) if pairs else None,
        }
    return out


def build_report(result: PrepareResult, *, task: str, on_invalid: str, max_seq_length: int,
                 tokenizer_name: str | None) -> dict[str, Any]:
    stats: dict[str, SplitStats] = result.split_stats
    tokens = result.tokenizer_used
    lengths: dict[str, Any] = {
        "unit": "tokens" if tokens else "characters",
        "tokenizer": tokenizer_name,
        "max_seq_length": max_seq_length,
        "per_split": {},
    }
    for name in SPLIT_NAMES:
        split = stats[name]
        lengths["per_split"][name] = {
            "characters": length_summary(split.chars, None),
            "tokens": length_summary(split.tokens, max_seq_length) if tokens else None,
        }
    train = stats["train"]
    if tokens:
        per_epoch = int(sum(train.tokens))
        method = f"sum of train-split token counts with the tokenizer of {tokenizer_name}"
    else:
        per_epoch = int(sum(train.chars) // CHARS_PER_TOKEN)
        method = f"estimate: train-split characters / {CHARS_PER_TOKEN} (give model_path for exact counts)"
    return {
        "task": task,
        "on_invalid": on_invalid,
        "inputs": result.inputs,
        "layout": result.layout,
        "columns": result.columns,
        "ignored_columns": result.ignored_columns,
        "absent_optional_fields": result.absent_optional,
        "end_markers_stripped": result.end_markers_stripped,
        "truncation": result.truncation,
        "length_fit": result.length_fit,
        "rows": {
            "read": result.rows_read,
            "valid": result.rows_valid,
            "rejected": result.rows_rejected,
            "duplicates_removed": sum(result.duplicates.values()),
            "written": {name: stats[name].rows for name in SPLIT_NAMES},
        },
        "rejected_by_reason": dict(sorted(result.problems.counts.items())),
        "problems": result.problems.as_dict(),
        "duplicates": result.duplicates,
        "prompt_overlap_with_train": result.prompt_overlap,
        "label_set": result.label_set,
        "label_counts": result.label_counts,
        "text_chunking": result.text_chunking,
        "lengths": lengths,
        "preference": preference_lengths(stats, tokens) if task == "preference" else None,
        "estimated_training_tokens_per_epoch": {"tokens": per_epoch, "method": method},
    }


def render_markdown(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [
        f"# Data report ({report['task']})",
        "",
        f"- Rows read: {rows['read']}; valid: {rows['valid']}; rejected: {rows['rejected']} "
        f"(on_invalid={report['on_invalid']}); exact duplicates removed: {rows['duplicates_removed']}",
        f"- Layout: {report['layout']} (columns: "
        + ", ".join(f"{k}={v}" for k, v in report["columns"].items()) + ")",
        "",
        "| split | rows |",
        "|---|---:|",
        *[f"| {name} | {count} |" for name, count in rows["written"].items()],
        "",
    ]
    lines += column_notes(report)
    chunking = report.get("text_chunking") or {}
    if chunking.get("documents"):
        lines += ["## Text chunks (split by document, then chunked)", "", "| split | documents | chunks |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {chunking['documents'][name]} | {chunking['chunks'][name]} |" for name in SPLIT_NAMES]
        lines.append("")
    if report["rejected_by_reason"]:
        lines += ["## Rejected rows by reason", "", "| reason | rows | meaning |", "|---|---:|---|"]
        lines += [f"| {k} | {v} | {KINDS[k]} |" for k, v in report["rejected_by_reason"].items()]
        lines += ["", "First examples:", ""]
        for kind, examples in report["problems"]["examples"].items():
            for ex in examples[:3]:
                where = ex["file"] + (f" line {ex['line']}" if ex["line"] is not None else "")
                field = f" `{ex['field']}`" if ex["field"] else ""
                lines.append(f"- {kind}: {where}{field}: {ex['reason']}")
        lines.append("")
    dup = report["duplicates"]
    lines += ["## Duplicates and overlap", "",
              f"- Exact duplicates removed: train {dup['train']}, validation {dup['validation']}, test {dup['test']}; "
              f"train rows repeating a validation/test row (removed from train): "
              f"{dup['train_rows_also_in_validation_or_test']}"]
    if "train_rows_prompt_in_validation_or_test" in dup:
        lines.append(f"- Train pairs whose prompt is in the validation/test input (removed from train): "
                     f"{dup['train_rows_prompt_in_validation_or_test']}")
    if report["prompt_overlap_with_train"]:
        lines.append("- Rows whose prompt also appears in train (different answer): "
                     + ", ".join(f"{k} {v}" for k, v in report["prompt_overlap_with_train"].items()))
    lines.append("")
    if report["label_set"] is not None:
        unit = "rows" if report["task"] == "classification" else "tag occurrences"
        lines += [f"## Label set ({unit} per split)", "", "| label | train | validation | test |", "|---|---:|---:|---:|"]
        counts = report["label_counts"] or {}
        lines += [f"| {label} | " + " | ".join(str(counts.get(s, {}).get(label, 0)) for s in SPLIT_NAMES) + " |"
                  for label in report["label_set"]]
        lines.append("")
    if report.get("preference"):
        pref = report["preference"]
        lines += [f"## Chosen and rejected lengths ({pref['unit']})", "",
                  "DPO sums log-probabilities over each answer, so a dataset whose chosen answers are mostly the "
                  "longer (or shorter) ones can teach length instead of quality.", "",
                  "| split | pairs | chosen mean | chosen p50 | rejected mean | rejected p50 | chosen longer | "
                  "rejected longer | same |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, entry in pref["per_split"].items():
            if not entry["pairs"]:
                lines.append(f"| {name} | 0 | | | | | | | |")
                continue
            c, r = entry["chosen"], entry["rejected"]
            lines.append(f"| {name} | {entry['pairs']} | {c['mean']} | {c['p50']:g} | {r['mean']} | {r['p50']:g} | "
                         f"{entry['chosen_longer']} ({entry['chosen_longer_ratio']:.0%}) | {entry['rejected_longer']} "
                         f"| {entry['same_length']} |")
        lines.append("")
    lengths = report["lengths"]
    unit = lengths["unit"]
    lines += [f"## Lengths ({unit}" + (f", tokenizer {lengths['tokenizer']}" if lengths["tokenizer"] else "") + ")",
              "", "| split | rows | mean | p50 | p90 | p95 | p99 | max | over max_seq_length |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, entry in lengths["per_split"].items():
        s = entry["tokens"] if unit == "tokens" else entry["characters"]
        if not s or not s.get("count"):
            lines.append(f"| {name} | 0 | | | | | | | |")
            continue
        over = s.get("over_max_seq_length", "n/a (no tokenizer)")
        lines.append(f"| {name} | {s['count']} | {s['mean']} | {s['p50']:g} | {s['p90']:g} | {s['p95']:g} | "
                     f"{s['p99']:g} | {s['max']} | {over} |")
    est = report["estimated_training_tokens_per_epoch"]
    lines += ["", f"Training tokens per epoch: {est['tokens']} ({est['method']}).", "",
              f"![length histogram]({HISTOGRAM_PNG})", ""]
    return "\n".join(lines)


def column_notes(report: dict[str, Any]) -> list[str]:
    """Lines on the columns dropped, the optional fields absent and the end-of-text markers stripped
    (the data report's Markdown, and the console)."""
    lines = []
    if report["ignored_columns"]:
        lines.append("- Columns dropped (not read by the task; rows holding each): "
                     + ", ".join(f"{k} ({v})" for k, v in report["ignored_columns"].items()))
    if report.get("absent_optional_fields"):
        lines.append("- Optional fields absent from the data (name them with the input in brackets if the data "
                     "has them under another name): "
                     + ", ".join(f"{role} ({key})" for role, key in report["absent_optional_fields"].items()))
    if report.get("end_markers_stripped"):
        lines.append(f"- Trailing end-of-text markers (such as <|endoftext|>) stripped from "
                     f"{report['end_markers_stripped']} target(s)")
    fit = report.get("length_fit")
    if fit and (sum(fit["too_long"].values()) or sum(fit["shortened"].values())):
        shortened = sum(fit["shortened"].values())
        lines.append(f"- Rows longer than max_seq_length {fit['max_seq_length']}: "
                     + ", ".join(f"{k} {v}" for k, v in fit["too_long"].items())
                     + f" ({fit['too_long_ratio']:.1%} of all rows); prompts shortened (truncation "
                     f"{report['truncation']}): " + ", ".join(f"{k} {v}" for k, v in fit["shortened"].items())
                     + (f", {sum(fit['tokens_cut'].values())} tokens cut "
                        f"({sum(fit['tokens_cut'].values()) / shortened:.0f} per shortened row)" if shortened else ""))
    return lines + ([""] if lines else [])


def plot_histogram(result: PrepareResult, path: Path, max_seq_length: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    use_tokens = result.tokenizer_used
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name in SPLIT_NAMES:
        values = result.split_stats[name].tokens if use_tokens else result.split_stats[name].chars
        if len(values):
            ax.hist(np.frombuffer(values, dtype=np.uint32), bins=50, alpha=0.5, label=f"{name} ({len(values)})")
    if use_tokens:
        ax.axvline(max_seq_length, color="red", linestyle="--", label=f"max_seq_length {max_seq_length}")
    ax.set_xlabel("tokens per row" if use_tokens else "characters per row")
    ax.set_ylabel("rows")
    ax.set_title("Row lengths by split")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report_dir: Path, report: dict[str, Any], result: PrepareResult, max_seq_length: int) -> None:
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (report_dir / REPORT_MD).write_text(render_markdown(report), encoding="utf-8")
    plot_histogram(result, report_dir / HISTOGRAM_PNG, max_seq_length)


def write_problems(report_dir: Path, problems: Problems) -> Path:
    """On a failed validation, keep the problem summary as an artifact too."""
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / PROBLEMS_JSON
    path.write_text(json.dumps(problems.as_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path

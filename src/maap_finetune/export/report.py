"""export_report.json and export_report.md: what was exported, how it compares, and the verdict.

The verdict: the fp32 graph check (the model's first layers built as fp32, `graph_check`) must give
PyTorch's greedy tokens for every parity prompt and its top-1 at every teacher-forced position; every
export must reach `min_token_agreement` (teacher-forced top-1 agreement with Evaluate's PyTorch reference
on the test split) and stay within `max_loss_delta` of PyTorch's test loss.

Agreement is a proportion over the scored tokens, so it is judged with its 95% Wilson interval: an export
fails when even the interval's upper end is below `min_token_agreement`. On a few dozen tokens (a small
test split) one flipped token moves the rate by several points; the interval says when the shortfall is
real. The report shows the rate, the interval and the token count.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maap_finetune.evaluation.parity_reference import ON_GREEDY_TOKENS

REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"


def scored_tokens_name(teacher_forced_on: str | None) -> str:
    """What the teacher-forced tokens are, for the report: the test answers', or (rft) the tuned model's greedy ones."""
    return "tokens of the tuned model's greedy test completions" if teacher_forced_on == ON_GREEDY_TOKENS \
        else "test tokens"


def threshold_failures(teacher_forced: Mapping[str, Any], min_token_agreement: float, max_loss_delta: float,
                       precision: str, teacher_forced_on: str | None = None) -> list[str]:
    failures = []
    agreement, delta = teacher_forced.get("top1_agreement"), teacher_forced.get("loss_delta")
    if agreement is None:
        return [f"{precision}: no test-split reference tokens to score agreement and loss on"]
    low, high = teacher_forced["top1_agreement_ci95"]
    if high < min_token_agreement:
        failures.append(f"{precision}: top-1 token agreement with PyTorch {agreement:.4f} over "
                        f"{teacher_forced['scored_tokens']} {scored_tokens_name(teacher_forced_on)} (95% interval "
                        f"{low:.4f} to {high:.4f}) is below min_token_agreement {min_token_agreement}")
    if delta > max_loss_delta:
        failures.append(f"{precision}: test loss {teacher_forced['loss_onnx']:.4f} exceeds PyTorch's "
                        f"{teacher_forced['loss_pytorch']:.4f} by {delta:.4f}, more than max_loss_delta {max_loss_delta}")
    return failures


def write_reports(folder: Path, report: Mapping[str, Any]) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    md_path = folder / REPORT_MD
    md_path.write_text(markdown(report), encoding="utf-8")
    return json_path, md_path


def _num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _cell(text: str, limit: int = 80) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def markdown(report: Mapping[str, Any]) -> str:
    lines = ["# ONNX Runtime GenAI export", ""]
    if not report.get("exported"):
        return "\n".join(lines + [f"Not exported: {report.get('reason')}", ""])
    verdict = "passed" if report["passed"] else "FAILED"
    lines += [f"**{verdict}** — {report['precision']} for {report['execution_provider']} "
              f"({report['architecture']}), built in {_num(report['build_seconds'], 1)} s.", ""]
    for failure in report.get("failures") or []:
        lines.append(f"- {failure}")
    size, speed = report["size_bytes"], report["speed"]
    tf = report["agreement"]["teacher_forced"]
    reference = report.get("reference") or {}
    loss_label = "loss on the greedy tokens" if reference.get("teacher_forced_on") == ON_GREEDY_TOKENS else "test loss"
    lines += ["", "| measure | PyTorch | ONNX Runtime GenAI |", "|---|---|---|",
              f"| engine | {reference.get('engine', 'n/a')} (Evaluate) | {speed['onnx_genai']['engine']} |",
              f"| size on disk (MB) | {size['pytorch'] / 1e6:.2f} | {size['onnx'] / 1e6:.2f} |",
              f"| {loss_label} (teacher-forced) | {_num(tf.get('loss_pytorch'))} | {_num(tf.get('loss_onnx'))} |",
              f"| time to first token (s) | {_num(speed['pytorch']['time_to_first_token_s'])} | "
              f"{_num(speed['onnx_genai']['time_to_first_token_s'])} |",
              f"| decode tokens/s | {_num(speed['pytorch']['decode_tokens_per_s'], 1)} | "
              f"{_num(speed['onnx_genai']['decode_tokens_per_s'], 1)} |", ""]
    if reference:
        rounded = (f"; the weights are stored as {reference['weights_dtype']}, so the reference is a rounded model"
                   if reference.get("weights_dtype") not in (None, reference.get("dtype"), "mixed")
                   and reference.get("dtype") != "float32" else "")
        lines += [f"PyTorch side: Evaluate's parity reference ({reference.get('engine')}, on "
                  f"{(reference.get('machine') or {}).get('host')}){rounded}.", ""]
    interval = tf.get("top1_agreement_ci95") or [None, None]
    ratio = (f"Decode speed-up {_num(speed['decode_speedup'], 2)}x; {speed.get('note')}." if speed.get("decode_speedup")
             else f"No decode speed-up: {speed.get('note')}.")
    lines += [f"Top-1 token agreement {_num(tf.get('top1_agreement'))} over {tf.get('scored_tokens')} "
              f"{scored_tokens_name(reference.get('teacher_forced_on'))} "
              f"(95% interval {_num(interval[0])} to {_num(interval[1])}; the export fails when its upper end is "
              f"below {report['thresholds']['min_token_agreement']}); loss delta {_num(tf.get('loss_delta'))} "
              f"(max {report['thresholds']['max_loss_delta']}). {ratio}", ""]
    check = report.get("fp32_parity")
    if check:
        ctf = check["teacher_forced"]
        lines += [f"fp32 graph check on the first {check['layers']} of {check['model_layers']} layers, against "
                  f"PyTorch fp32 on the same cut model: top-1 identical at {ctf.get('agreeing_tokens')} of "
                  f"{ctf.get('scored_tokens')} positions, NLL within {_num(ctf.get('max_token_nll_delta'), 6)} nats "
                  f"(tolerance {check['nll_tolerance']}).", ""]
    for title, parity in (("fp32 graph check: the cut model's top-1 after the prompt and after each greedy token (must "
                           "be identical)", report.get("fp32_parity")),
                          (f"{report['precision']} greedy generation (ONNX Runtime GenAI's tokens up to the first that "
                           "differs)", report["agreement"]["generation"])):
        if not parity:
            continue
        lines += [f"## {title}", "", f"{parity['identical_prompts']} of {parity['prompts']} prompts identical; "
                  f"greedy agreement {_num(parity['greedy_token_agreement'])}.", "",
                  "| test line | prompt | diverges at | PyTorch | ONNX Runtime GenAI |", "|---|---|---|---|---|"]
        for p in parity["per_prompt"]:
            where = "—" if p["first_divergence"] is None else f"token {p['first_divergence']}"
            lines.append(f"| {p['line']} | {_cell(p['prompt'], 40)} | {where} | {_cell(p['reference_text'])} | "
                         f"{_cell(p['onnx_text'])} |")
        lines.append("")
    return "\n".join(lines)

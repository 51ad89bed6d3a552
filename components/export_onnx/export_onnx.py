"""Export ONNX: the fine-tuned model as an ONNX Runtime GenAI folder, checked against PyTorch, registered.

    python export_onnx.py --mlflow_model mlflow_model/ --evaluation evaluation/ --test_data prepared/ \
        --registration registration/ --execution_provider cpu --precision int4 --int4_block_size 32 \
        --fp32_parity True --fp32_parity_layers 2 --parity_prompts 8 --parity_max_new_tokens 32 --max_seq_length 2048 \
        --min_token_agreement 0.9 --max_loss_delta 0.05 --registered_model_name maap-finetuned \
        --onnx_model out/onnx_model --export_report out/export_report

Order: the gate (Evaluate's decision.json; a failed gate writes the reason and exits 0) -> checks
before any weight is read (architecture, precision x provider, Evaluate's parity reference computed for
these weights and settings, tokenizer and chat template) -> in one child process, the fp32 graph check's
cut copy (built as fp32 and run by PyTorch), then the full build with onnxruntime-genai's model builder ->
in a second child process, the export's speed timed alone, then (the tokenizer, scipy and MLflow imported
here meanwhile) its agreement and loss against the reference and the cut copy's fp32 graph against its PyTorch
run -> export_report.json/.md -> register as <registered_model_name>-onnx when every check passed.

The full PyTorch model is never loaded here: the PyTorch side of the comparison is Evaluate's
parity_reference.json (maap_finetune.evaluation.parity_reference), and the fp32 graph check loads only
the first fp32_parity_layers layers, with a cut vocabulary (maap_finetune.export.graph_check). On rft
data (prompts without answers) that reference is teacher-forced on the tuned model's own greedy completions, and the agreement
and loss thresholds apply to those tokens. Scratch files live in one
temporary folder, removed on every exit (a SIGTERM included).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maap_finetune.common.cli import StrictParser, bounded, str2bool
from maap_finetune.common.errors import ConfigErrors, exit_on_user_error
from maap_finetune.export.registration import ONNX_SUFFIX
from maap_finetune.registry.names import registration_name_problems



@dataclass(frozen=True)
class Config:
    mlflow_model: Path
    evaluation: Path
    test_data: Path
    registration: Path | None
    execution_provider: str
    precision: str
    int4_block_size: int
    int4_accuracy_level: int | None
    fp32_parity: bool
    fp32_parity_layers: int
    parity_prompts: int
    parity_max_new_tokens: int
    max_seq_length: int
    min_token_agreement: float
    max_loss_delta: float
    registered_model_name: str
    registry_name: str | None
    onnx_model: Path
    export_report: Path


def build_parser() -> StrictParser:
    p = StrictParser(description="Export the fine-tuned model to ONNX Runtime GenAI and check it (see spec.yaml).")
    p.add_argument("--mlflow_model", type=Path, required=True)
    p.add_argument("--evaluation", type=Path, required=True)
    p.add_argument("--test_data", type=Path, required=True)
    p.add_argument("--registration", type=Path, default=None)
    p.add_argument("--execution_provider", choices=["cpu", "cuda"], required=True)
    p.add_argument("--precision", choices=["int4", "fp16", "fp32"], required=True)
    p.add_argument("--int4_block_size", type=bounded(int, 16, 256), required=True)
    p.add_argument("--int4_accuracy_level", type=bounded(int, 1, 4), default=None)
    p.add_argument("--fp32_parity", type=str2bool, required=True)
    p.add_argument("--fp32_parity_layers", type=bounded(int, 1, 1000), required=True)
    p.add_argument("--parity_prompts", type=bounded(int, 1, 1000), required=True)
    p.add_argument("--parity_max_new_tokens", type=bounded(int, 1, 1024), required=True)
    p.add_argument("--max_seq_length", type=bounded(int, 16), required=True)
    p.add_argument("--min_token_agreement", type=bounded(float, 0.0, 1.0), required=True)
    p.add_argument("--max_loss_delta", type=bounded(float, 0.0), required=True)
    p.add_argument("--registered_model_name", type=str, required=True)
    p.add_argument("--registry_name", type=str, default=None)
    p.add_argument("--onnx_model", type=Path, required=True)
    p.add_argument("--export_report", type=Path, required=True)
    return p


def parse_args(argv: Sequence[str] | None = None) -> Config:
    from maap_finetune.export.builder import INT4_BLOCK_SIZES

    config = Config(**vars(build_parser().parse_args(argv)))
    problems = registration_name_problems(config.registered_model_name, config.registry_name, suffix=ONNX_SUFFIX)
    if config.int4_block_size not in INT4_BLOCK_SIZES:
        problems.append(f"--int4_block_size {config.int4_block_size}: use one of {', '.join(map(str, INT4_BLOCK_SIZES))}")
    if not (config.mlflow_model / "MLmodel").is_file():
        problems.append(f"--mlflow_model {config.mlflow_model}: MLmodel is missing (give Fine-Tune's mlflow_model output)")
    if not (config.evaluation / "decision.json").is_file():
        problems.append(f"--evaluation {config.evaluation}: decision.json is missing (give Evaluate's output)")
    if problems:
        raise ConfigErrors(problems, header="export_onnx: invalid inputs")
    return config


def gate(config: Config) -> str | None:
    """None when Evaluate's gate passed, else the reason this step does nothing."""
    from maap_finetune.evaluation.gate import read_decision

    decision = read_decision(config.evaluation)
    return None if decision["passed"] else f"the quality gate failed: {decision.get('reason') or 'no reason given'}"


def run(config: Config) -> dict:
    from maap_finetune.export import builder
    from maap_finetune.export.checks import check_export, load_reference, skipped_report
    from maap_finetune.models.source import resolve_model_source

    config.onnx_model.mkdir(parents=True, exist_ok=True)
    reason = gate(config)
    if reason is not None:
        return finish(config, skipped_report(reason, config))
    source = resolve_model_source(config.mlflow_model, None)
    architecture = builder.check_architecture(Path(source.model) / "config.json")
    builder.check_provider(config.execution_provider, config.precision)
    from maap_finetune.common.scratch import scratch_folder

    with scratch_folder("maap-onnx-") as scratch, builder.BuildChild() as child:
        scratch = Path(scratch)
        hf = builder.stage_hf_folder(Path(source.model), Path(source.tokenizer), scratch / "hf")
        reference = load_reference(config, source)
        cut = prepare_graph_check(config, source, hf, scratch, reference, child)
        print(f"[export_onnx] building {architecture} as {config.precision} for {config.execution_provider}", flush=True)
        start = time.perf_counter()
        child.build(hf, config.onnx_model, config.precision, config.execution_provider, scratch / "cache",
                    config.int4_block_size, config.int4_accuracy_level)
        build_seconds = time.perf_counter() - start
        child.close()  # its memory goes back to the system before the parity runs load the export
        report = check_export(config, source, architecture, hf, scratch, build_seconds, reference, cut,
                              meanwhile=open_tracking)
    return finish(config, report)


def open_tracking() -> None:
    """Import MLflow and open its store (a new SQLite store creates its tables first: seconds) while the
    parity checks run in their child process, so that registration starts at once after them. Not earlier:
    beside the build child's peak, MLflow's imports would add to the step's."""
    import mlflow

    from maap_finetune.common import tracking
    from maap_finetune.registry import target

    if tracking.is_main_process() and not target.running_in_azure_ml():
        mlflow.MlflowClient().search_registered_models(max_results=1)


def prepare_graph_check(config: Config, source, hf: Path, scratch: Path, reference: dict, child) -> dict | None:
    """The fp32 graph check's cut copy, built as fp32 and run by PyTorch in the build child, before the full
    build: one start of the child and one import of torch, transformers and the builder for both, and the
    full build then reuses the heap the cut copy freed there (after the build, that heap beside the parity
    runs here would add to the step's peak: measured 3.03 GB against 2.30 GB at 220M parameters)."""
    from maap_finetune.export import graph_check

    if not config.fp32_parity:
        return None
    print(f"[export_onnx] fp32 graph check on the first {config.fp32_parity_layers} layers: cut, built as fp32 "
          "and run by PyTorch in the build's child process", flush=True)
    start = time.perf_counter()
    cut = child.submit(graph_check.prepare, str(hf), str(source.tokenizer), reference, config.fp32_parity_layers,
                       config.execution_provider, str(scratch)).result()
    return {**cut, "seconds": time.perf_counter() - start}


def finish(config: Config, report: dict) -> dict:
    """Log, register when every check passed, write the reports; fail the step when a check failed."""
    from maap_finetune.common import tracking
    from maap_finetune.export import registration
    from maap_finetune.export.report import write_reports
    from maap_finetune.registry import target
    from maap_finetune.registry.model_info import ModelInfo

    name = registration.onnx_model_name(config.registered_model_name)
    print(f"[export_onnx] registering: writing the report, then {name} when every check passed", flush=True)
    write_reports(config.export_report, report)
    with tracking.step_run() as run_:
        step_run_id, pipeline_run_id = target.run_ids(run_)
        if not report["exported"]:
            info = ModelInfo(registered=False, reason=report["reason"], name=name, pipeline_run_id=pipeline_run_id)
        elif not report["passed"]:
            info = ModelInfo(registered=False, name=name, pipeline_run_id=pipeline_run_id,
                             reason="the export failed its checks: " + "; ".join(report["failures"])
                             + "; fix: " + failed_check_fix(config, report))
        else:
            source = registration.source_model(config.registration)
            tags = registration.build_tags(report, source, pipeline_run_id, step_run_id)
            info = registration.register(config.onnx_model, name, tags, target.running_in_azure_ml(), run_,
                                         config.registry_name)
        info.write(config.export_report)
        if run_ is not None:
            log_run(report, info)
            tracking.log_artifacts(config.export_report, artifact_path="export_report")
    # A failed check is a quality decision, as Evaluate's gate is: no ONNX model, the reason and the fix
    # written and printed, and the step succeeds (the merged model stays registered). Errors still raise.
    print(f"[export_onnx] {info.summary()} (report: {config.export_report / 'export_report.md'})", flush=True)
    return report


def failed_check_fix(config: Config, report: dict) -> str:
    """What to change when the export failed its checks, by which check failed."""
    from maap_finetune.export.graph_check import failures

    graph = report.get("fp32_parity")
    if graph and failures(graph):
        return ("the fp32 graph check failed, so onnxruntime-genai's builder does not reproduce this model; keep "
                "the PyTorch model (export_onnx=false) and report the architecture to onnxruntime-genai")
    if config.precision != "fp32":
        checked = " (the fp32 graph check passed)" if graph else ""
        return (f"export at onnx_precision=fp32{checked}, or accept more {config.precision} rounding with a lower "
                f"min_token_agreement / higher max_loss_delta (today {config.min_token_agreement} / "
                f"{config.max_loss_delta})")
    return (f"lower min_token_agreement / raise max_loss_delta (today {config.min_token_agreement} / "
            f"{config.max_loss_delta}) if this drift is acceptable, or keep the PyTorch model (export_onnx=false)")


def log_run(report: dict, info) -> None:
    import mlflow

    from maap_finetune.common import tracking

    if report["exported"]:
        tf, speed = report["agreement"]["teacher_forced"], report["speed"]
        tracking.log_params({k: report[k] for k in ("precision", "execution_provider", "architecture")})
        tracking.log_metrics({
            "onnx_top1_agreement": tf.get("top1_agreement"), "onnx_loss_delta": tf.get("loss_delta"),
            "onnx_size_mb": report["size_bytes"]["onnx"] / 1e6, "pytorch_size_mb": report["size_bytes"]["pytorch"] / 1e6,
            "onnx_decode_tokens_per_s": speed["onnx_genai"]["decode_tokens_per_s"],
            "pytorch_decode_tokens_per_s": speed["pytorch"]["decode_tokens_per_s"],
        })
    mlflow.set_tags({"onnx_registered": str(info.registered).lower(), "onnx_registration": info.summary()[:5000]})


def main(argv: Sequence[str] | None = None):
    return run(parse_args(argv))


if __name__ == "__main__":
    exit_on_user_error(main)

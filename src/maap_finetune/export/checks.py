"""Every check of one export, gathered into the report dict (see `report` for the verdict)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError


def skipped_report(reason: str, config) -> dict[str, Any]:
    return {"exported": False, "passed": False, "reason": reason, "precision": config.precision,
            "execution_provider": config.execution_provider, "failures": []}


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name.replace("-", "_"): version(name) for name in ("onnxruntime-genai", "onnxruntime", "torch", "transformers")}


def load_reference(config, source) -> dict[str, Any]:
    """Evaluate's parity reference, refused unless computed for these weights, tokenizer, test split and settings."""
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.evaluation import parity_reference

    reference = parity_reference.read_reference(config.evaluation)
    expected = {
        "model_sha256": parity_reference.folder_sha256(source.model),
        "tokenizer_sha256": parity_reference.folder_sha256(source.tokenizer),
        "test_split_sha256": parity_reference.file_sha256(load_prepared(config.test_data).split_path("test")),
        "prompts": config.parity_prompts,
        "max_new_tokens": config.parity_max_new_tokens,
        "max_seq_length": config.max_seq_length,
    }
    parity_reference.check_reference(reference, config.evaluation / parity_reference.REFERENCE_FILE, expected)
    if not reference["generation"]:
        raise UserError(f"{config.evaluation / parity_reference.REFERENCE_FILE}: no parity prompts (the test split "
                        "is empty?); the parity checks need test prompts")
    return reference


def speed(reference: dict[str, Any], onnx_timing, precision: str, execution_provider: str) -> dict[str, Any]:
    """Both engines' timings, each with where it was measured; a ratio only when they share a machine and device.

    Evaluate usually runs on a GPU cluster and Export ONNX on a CPU one: a ratio of those timings would
    compare machines, not engines.
    """
    from maap_finetune.evaluation.parity_reference import machine

    here = machine("cuda" if execution_provider == "cuda" else "cpu")
    there = reference["machine"]
    same = there.get("host") == here["host"] and there.get("device") == here["device"]
    torch_speed, onnx_speed = reference["timing"], onnx_timing.summary()
    ratio = (onnx_speed["decode_tokens_per_s"] / torch_speed["decode_tokens_per_s"]
             if same and onnx_speed["decode_tokens_per_s"] and torch_speed["decode_tokens_per_s"] else None)
    note = (f"both measured on {here['host']} ({here['device']}, {here['cpus']} CPUs visible, shared with whatever "
            "else ran)" if same else
            f"PyTorch was timed by Evaluate on {there.get('host')} ({there.get('device')}), ONNX Runtime GenAI here on "
            f"{here['host']} ({here['device']}): different machines, so no speed-up is given")
    return {"pytorch": {"engine": reference["engine"], "measured_on": there, **torch_speed},
            "onnx_genai": {"engine": f"onnxruntime-genai, {precision} on {execution_provider}", "measured_on": here,
                           **onnx_speed},
            "decode_speedup": ratio, "same_machine": same, "note": note,
            # Evaluate times PyTorch on every parity prompt; the export is timed on the first (`parity.speed`)
            "prompts": {"pytorch": len(reference["generation"]), "onnx_genai": min(1, len(reference["generation"]))}}


# The export's onnxruntime_genai.Model, kept in the checks' child from its timed job to its compared one.
_LOADED: dict[str, Any] = {}


def time_export_in_child(onnx_model: str, reference: dict[str, Any]):
    """The checks' child's first job, with nothing else of the step beside it: the export's speed."""
    from maap_finetune.export import parity

    print("[export_onnx] timing the export's greedy generation on the first parity prompt", flush=True)
    model = _LOADED[onnx_model] = parity.load(Path(onnx_model))
    return parity.speed(model, reference)


def compare_export_in_child(onnx_model: str, reference: dict[str, Any]) -> dict:
    """The checks' child's second job: the export against Evaluate's reference (untimed)."""
    from maap_finetune.export import parity

    print(f"[export_onnx] comparing the export's tokens with Evaluate's on {len(reference['generation'])} prompts",
          flush=True)
    return parity.compare(Path(onnx_model), reference, model=_LOADED.pop(onnx_model, None))


def compare_cut_in_child(cut: dict[str, Any], scratch: str) -> dict:
    """The checks' child's last job: the cut copy's fp32 graph against its PyTorch run (untimed)."""
    from maap_finetune.export import graph_check

    print("[export_onnx] comparing the fp32 graph check's cut copy with its PyTorch run", flush=True)
    return graph_check.compare_cut(cut, scratch)


def text_decoder(tokenizer_dir: Path):
    """decode(ids) -> the text the report shows, as transformers' fast tokenizer decodes it with
    skip_special_tokens. From the `tokenizers` library's own Tokenizer when tokenizer.json is there and the
    tokenizer is BPE (transformers' decode is then that Tokenizer's, untouched: it skips its space clean-up for BPE),
    so that this process does not import transformers for it (2.9 s on 2 cores, against 0.1 s); transformers'
    AutoTokenizer otherwise."""
    path = tokenizer_dir / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        if type(tokenizer.model).__name__ == "BPE":
            return lambda tokens: tokenizer.decode(list(tokens), skip_special_tokens=True)
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return lambda tokens: auto.decode(tokens, skip_special_tokens=True)


def check_export(config, source, architecture: str, hf_folder: Path, scratch: Path, build_seconds: float,
                 reference: dict[str, Any], cut: dict[str, Any] | None, meanwhile=None) -> dict[str, Any]:
    """The parity checks of the built export; `cut` is the fp32 graph check's prepared cut copy
    (graph_check.prepare, run in the build child), None when the check is off.

    The comparisons run in a child process of their own (onnxruntime_genai holds the GIL while it runs, so a
    thread could not overlap them). Its first job times the export's generation while this process waits, so
    that nothing else of this step runs beside it. Then, while the child compares the export and the cut copy
    (untimed), this process imports and loads what the report and the registration need: the tokenizer
    (`text_decoder`), scipy (`parity.with_interval`) and `meanwhile` (the registration's imports)."""
    from maap_finetune.export import builder, graph_check, parity
    from maap_finetune.export.report import threshold_failures

    child = builder.BuildChild()
    try:
        onnx_timing = child.submit(time_export_in_child, str(config.onnx_model), reference).result()
        exported_job = child.submit(compare_export_in_child, str(config.onnx_model), reference)
        fp32_job = None if cut is None else child.submit(
            compare_cut_in_child, {"layers": cut["layers"], "reference": cut["reference"]}, str(scratch))
        import scipy.stats  # noqa: F401  (parity.with_interval's import, paid here beside the child's work)

        decode = text_decoder(Path(source.tokenizer))
        if meanwhile is not None:
            meanwhile()
        exported = exported_job.result()
        compared_fp32 = None if fp32_job is None else fp32_job.result()
    finally:
        child.close(wait=False)  # the child holds no model now: its exit overlaps the report and registration

    generation = parity.generation_summary(parity.add_texts(exported["results"], decode))
    teacher_forced = parity.with_interval(exported["teacher_forced"])
    timings = {"build_s": build_seconds, "compare_s": exported["seconds"]}
    fp32 = None
    if cut is not None:
        fp32 = graph_check.finish(cut, compared_fp32, hf_folder, decode)
        timings["fp32_graph_check_s"] = cut["seconds"] + compared_fp32["seconds"]  # its build-child part included
    failures = (graph_check.failures(fp32) if fp32 else []) + threshold_failures(
        teacher_forced, config.min_token_agreement, config.max_loss_delta, config.precision,
        reference.get("teacher_forced_on"))
    pytorch_bytes = builder.folder_bytes(Path(source.model))
    onnx_bytes = builder.folder_bytes(config.onnx_model)
    return {
        "exported": True,
        "passed": not failures,
        "failures": failures,
        "reason": "every check passed" if not failures else "; ".join(failures),
        "precision": config.precision,
        "execution_provider": config.execution_provider,
        "int4_block_size": config.int4_block_size if config.precision == "int4" else None,
        "int4_accuracy_level": config.int4_accuracy_level if config.precision == "int4" else None,
        "architecture": architecture,
        "build_seconds": build_seconds,
        "timings": timings,
        "versions": _versions(),
        "thresholds": {"min_token_agreement": config.min_token_agreement, "max_loss_delta": config.max_loss_delta},
        "reference": {k: reference.get(k) for k in ("engine", "dtype", "device", "weights_dtype", "machine",
                                                    "model_sha256", "prompts", "max_new_tokens", "max_seq_length",
                                                    "teacher_forced_on")},
        "fp32_parity": fp32,
        "agreement": {"generation": generation, "teacher_forced": teacher_forced},
        "size_bytes": {"pytorch": pytorch_bytes, "onnx": onnx_bytes, "ratio": onnx_bytes / pytorch_bytes if pytorch_bytes else None},
        "speed": speed(reference, onnx_timing, config.precision, config.execution_provider),
    }

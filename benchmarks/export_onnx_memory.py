"""Export ONNX's peak memory (whole process tree) and wall time on random Phi-3-architecture models.

Builds, in a temporary folder (never committed), a random Phi-3 model of the size asked for (vocab 32064,
head size 64, intermediate 2.75 x hidden, saved in bf16 as Fine-Tune saves it) with the tiny model's
tokenizer, as Fine-Tune's mlflow_model; Data Prep's output from the sample chats; and Evaluate's output
(decision.json, and the parity reference Evaluate writes, computed here with Evaluate's own code on the
CPU). Then runs the Export ONNX entry script in its own process with the spec's defaults (int4, cpu,
fp32_parity) and samples the RSS of that process and its children every 50 ms.

    python benchmarks/export_onnx_memory.py --size 100m --size 250m
    python benchmarks/export_onnx_memory.py --size 100m --code /tmp/main-copy   # another checkout's Export
    python benchmarks/export_onnx_memory.py --size 250m --parity_prompts 2 --parity_max_new_tokens 8

`--code` runs the Export step of another checkout (e.g. `git archive main | tar -x -C /tmp/main-copy`), to
measure before and after on the same machine; that checkout's own parser decides which flags it takes.
Prints one JSON line per size: parameters, peak RSS, bytes/param, wall time, the builder's time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {  # hidden, layers -> about this many parameters with vocab 32064
    "100m": (768, 7),
    "250m": (1024, 14),
    "tiny": (128, 2),
}


def build_model(folder: Path, hidden: int, layers: int) -> tuple[Path, int]:
    """A random Phi-3 model saved as Fine-Tune's mlflow_model (bf16 weights); returns (folder, parameters)."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    from maap_finetune.models.tiny import build_tokenizer, SAMPLE_DATA
    from maap_finetune.registry.mlflow_model import save_mlflow_model

    tokenizer = build_tokenizer([SAMPLE_DATA])
    heads = hidden // 64
    config = Phi3Config(vocab_size=32064, hidden_size=hidden, intermediate_size=int(2.75 * hidden) // 64 * 64,
                        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                        max_position_embeddings=4096, original_max_position_embeddings=4096,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config).to(torch.bfloat16).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")])
    parameters = sum(p.numel() for p in model.parameters())
    path = save_mlflow_model(model, tokenizer, folder / "mlflow_model", metadata={"peft_method": "none"})
    return path, parameters


def prepare(folder: Path) -> Path:
    sys.path.insert(0, str(REPO))
    from tests.evaluate.fixtures import write_prepared

    return write_prepared(folder / "prepared")


def evaluation_folder(folder: Path, mlflow_model: Path, prepared: Path, spec: dict) -> Path:
    """decision.json, plus the parity reference written the way Evaluate writes it (when this checkout has it)."""
    out = folder / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "decision.json").write_text(json.dumps({"passed": True, "metric": "loss", "values": {}, "reason": "bench"}))
    (out / "metrics.json").write_text(json.dumps({"task": "chat"}))
    try:
        from maap_finetune.evaluation import parity_reference
    except ImportError:
        return out
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.evaluation.generation import load_model, read_examples
    from maap_finetune.models.source import resolve_model_source

    source = resolve_model_source(mlflow_model, None)
    data = load_prepared(prepared)
    examples = read_examples(data.split_path("test"), data.format, spec["parity_prompts"])
    loaded = load_model(source.model, source.tokenizer, trust_remote_code=False)
    reference = parity_reference.build_reference(loaded, examples, source.model, source.tokenizer,
                                                 data.split_path("test"), spec["parity_max_new_tokens"],
                                                 spec["max_seq_length"])
    parity_reference.write_reference(out, reference)
    return out


def spec_defaults() -> dict:
    import yaml

    inputs = yaml.safe_load((REPO / "components" / "export_onnx" / "spec.yaml").read_text())["inputs"]
    return {k: v.get("default") for k, v in inputs.items()}


def measure(command: list[str], env: dict, log: Path) -> dict:
    import psutil

    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)
        parent, peak = psutil.Process(process.pid), 0
        while process.poll() is None:
            try:
                rss = parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
                peak = max(peak, rss)
            except psutil.Error:
                pass
            time.sleep(0.05)
    return {"rc": process.returncode, "wall_s": time.perf_counter() - start, "peak_rss_bytes": peak}


def run_size(size: str, code: Path, keep: Path | None, overrides: dict) -> dict:
    hidden, layers = SIZES[size]
    with tempfile.TemporaryDirectory(prefix="maap-export-bench-") as scratch:
        folder = Path(scratch)
        mlflow_model, parameters = build_model(folder, hidden, layers)
        prepared = prepare(folder)
        spec = {**spec_defaults(), **overrides}
        evaluation = evaluation_folder(folder, mlflow_model, prepared, spec)
        argv = [sys.executable, str(code / "components" / "export_onnx" / "export_onnx.py"),
                "--mlflow_model", str(mlflow_model), "--evaluation", str(evaluation), "--test_data", str(prepared),
                "--onnx_model", str(folder / "onnx_model"), "--export_report", str(folder / "export_report"),
                "--registered_model_name", "bench", "--min_token_agreement", "0", "--max_loss_delta", "100"]
        taken = {"mlflow_model", "evaluation", "test_data", "onnx_model", "export_report", "registered_model_name",
                 "min_token_agreement", "max_loss_delta", "registration", "registry_name", "int4_accuracy_level"}
        spec_text = (code / "components" / "export_onnx" / "spec.yaml").read_text()
        for name, value in spec.items():
            if name not in taken and value is not None and f"--{name} " in spec_text:
                argv += [f"--{name}", str(value)]
        env = {**os.environ, "PYTHONPATH": f"{code / 'src'}:{code}", "HF_HUB_OFFLINE": "1",
               "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}", "TOKENIZERS_PARALLELISM": "false"}
        env.pop("MLFLOW_RUN_ID", None)
        log = folder / "export.log"
        result = measure(argv, env, log)
        report_path = folder / "export_report" / "export_report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            (keep / f"export_{size}.log").write_text(log.read_text())
            if report:
                (keep / f"export_report_{size}.json").write_text(json.dumps(report, indent=2))
        if result["rc"] != 0:
            print(log.read_text()[-4000:], file=sys.stderr)
    return {"size": size, "code": str(code), "parameters": parameters, **result,
            "bytes_per_param": result["peak_rss_bytes"] / parameters,
            "build_seconds": report.get("build_seconds"), "passed": report.get("passed"),
            "timings": report.get("timings")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", action="append", choices=sorted(SIZES), required=True)
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose Export ONNX step runs")
    parser.add_argument("--keep", type=Path, default=None, help="copy logs and reports here")
    parser.add_argument("--parity_prompts", type=int, default=None, help="instead of the spec's default (both steps)")
    parser.add_argument("--parity_max_new_tokens", type=int, default=None, help="instead of the spec's default")
    args = parser.parse_args(argv)
    overrides = {k: v for k in ("parity_prompts", "parity_max_new_tokens") if (v := getattr(args, k)) is not None}
    for size in args.size:
        print(json.dumps({**run_size(size, args.code.resolve(), args.keep, overrides), **overrides}), flush=True)


if __name__ == "__main__":
    main()

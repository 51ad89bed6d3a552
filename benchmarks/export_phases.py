"""Where Export ONNX's time and memory go, phase by phase, beside onnxruntime-genai's builder run alone.

For each size (benchmarks/scale.py's shapes: random bf16 Phi-3-architecture models, vocab 32064), builds
once, in --workdir, Fine-Tune's mlflow_model, Data Prep's output from the sample chats and Evaluate's
output (decision.json and the parity reference, computed with Evaluate's own code on the CPU). Then:

- `builder`: `python -m onnxruntime_genai.models.builder` on the same weights and tokenizer, int4 for the
  CPU, block size 32, as the step asks it: the builder's own peak and time, outside our code;
- `step`: the Export ONNX entry script (the spec's defaults) in its own process.

Both process trees are sampled every 0.1 s (summed RSS of the process and its children). The step's
phases are cut at the lines it prints ("[export_onnx] <phase> ..."), timestamped as they arrive: the
peak and the duration of each phase, and the step's own timings from export_report.json.

    python benchmarks/export_phases.py --sizes 0.2b,0.4b --out benchmarks/results/export-phases-cpu2-<date>
    python benchmarks/export_phases.py --sizes 0.2b --code /tmp/before   # another checkout's Export step
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import export_onnx_memory  # noqa: E402  (benchmarks/: its evaluation folder and spec defaults)
import scale  # noqa: E402  (benchmarks/: the model shapes)

# Lines the step prints at the start of each phase -> the phase's name.
MARKERS = {"building": "builder child", "comparing": "int4 parity", "fp32 graph check": "fp32 graph check",
           "registering": "report + registration"}


def inputs(size: str, root: Path) -> dict:
    """mlflow_model, prepared data, evaluation (with the parity reference); built once per size."""
    folder = root / size
    done = folder / "inputs.json"
    if done.is_file():
        return json.loads(done.read_text())
    import torch
    from transformers import GenerationConfig, Phi3ForCausalLM

    from maap_finetune.models.tiny import build_tokenizer
    from maap_finetune.registry.mlflow_model import save_mlflow_model

    tokenizer = build_tokenizer([REPO / "data" / "sample" / "chat.jsonl"])
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)
    model = Phi3ForCausalLM(scale.phi3_config(*scale.SHAPES[size], tokenizer)).eval()
    torch.set_default_dtype(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")])
    parameters = sum(p.numel() for p in model.parameters())
    mlflow_model = save_mlflow_model(model, tokenizer, folder / "mlflow_model", metadata={"peft_method": "none"})
    del model
    prepared = export_onnx_memory.prepare(folder)
    evaluation = export_onnx_memory.evaluation_folder(folder, mlflow_model, prepared, export_onnx_memory.spec_defaults())
    result = {"parameters": parameters, "mlflow_model": str(mlflow_model), "prepared": str(prepared),
              "evaluation": str(evaluation)}
    done.write_text(json.dumps(result))
    return result


def tree_rss(pid: int) -> int:
    import psutil

    try:
        parent = psutil.Process(pid)
        return parent.memory_info().rss + sum(c.memory_info().rss for c in parent.children(recursive=True))
    except psutil.Error:
        return 0


def sampled(command: list[str], env: dict, log: Path) -> dict:
    """Run `command`; (t, rss) samples every 0.1 s and its output lines with the time each arrived."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read():
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    while process.poll() is None:
        samples.append((time.perf_counter() - start, tree_rss(process.pid)))
        time.sleep(0.1)
    reader.join()
    log.write_text("\n".join(f"{t:8.2f} {text}" for t, text in lines) + "\n")
    return {"rc": process.returncode, "wall_s": time.perf_counter() - start, "samples": samples, "lines": lines}


def phases(run: dict) -> list[dict]:
    """The step's run cut at its phase lines: name, start, seconds, peak RSS of the tree."""
    cuts = [(0.0, "start-up, checks, reference")]
    for t, text in run["lines"]:
        for marker, name in MARKERS.items():
            if text.startswith(f"[export_onnx] {marker}"):
                cuts.append((t, name))
    cuts.append((run["wall_s"], None))
    out = []
    for (begin, name), (end, _) in zip(cuts, cuts[1:]):
        peak = max((rss for t, rss in run["samples"] if begin <= t < end), default=0)
        out.append({"phase": name, "start_s": round(begin, 2), "seconds": round(end - begin, 2), "peak_rss_bytes": peak})
    return out


def builder_alone(size: str, given: dict, root: Path, env: dict) -> dict:
    """onnxruntime-genai's builder CLI on the merged weights plus tokenizer, as the step stages them."""
    import shutil

    from maap_finetune.export.builder import stage_hf_folder
    from maap_finetune.models.source import resolve_model_source

    work = root / size / "builder_alone"
    shutil.rmtree(work, ignore_errors=True)
    source = resolve_model_source(Path(given["mlflow_model"]), None)
    hf = stage_hf_folder(Path(source.model), Path(source.tokenizer), work / "hf")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(work / "out"),
               "-p", "int4", "-e", "cpu", "-c", str(work / "cache"), "--extra_options", "hf_token=false",
               "block_size=32"]
    run = sampled(command, env, root / size / "builder_alone.log")
    shutil.rmtree(work, ignore_errors=True)
    return {"rc": run["rc"], "wall_s": round(run["wall_s"], 2), "peak_rss_bytes": max(r for _, r in run["samples"])}


def step(size: str, given: dict, root: Path, code: Path, env: dict) -> dict:
    import shutil

    folder = root / size / "step"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    spec = export_onnx_memory.spec_defaults()
    argv = [sys.executable, str(code / "components" / "export_onnx" / "export_onnx.py"),
            "--mlflow_model", given["mlflow_model"], "--evaluation", given["evaluation"],
            "--test_data", given["prepared"], "--onnx_model", str(folder / "onnx_model"),
            "--export_report", str(folder / "export_report"), "--registered_model_name", "bench",
            "--min_token_agreement", "0", "--max_loss_delta", "100"]
    for name in ("execution_provider", "precision", "int4_block_size", "fp32_parity", "fp32_parity_layers",
                 "parity_prompts", "parity_max_new_tokens", "max_seq_length"):
        argv += [f"--{name}", str(spec[name])]
    env = {**env, "PYTHONPATH": f"{code / 'src'}:{code}", "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlruns.db'}"}
    run = sampled(argv, env, root / size / "step.log")
    report_path = folder / "export_report" / "export_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    shutil.rmtree(folder, ignore_errors=True)
    if run["rc"] != 0:
        print((root / size / "step.log").read_text()[-4000:], file=sys.stderr)
    return {"rc": run["rc"], "wall_s": round(run["wall_s"], 2), "peak_rss_bytes": max(r for _, r in run["samples"]),
            "passed": report.get("passed"), "timings": report.get("timings"), "phases": phases(run)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.2b,0.4b", help=f"comma-separated, from {', '.join(scale.SHAPES)}")
    parser.add_argument("--workdir", type=Path, default=REPO / ".maap" / "export_phases")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose Export ONNX step runs")
    parser.add_argument("--no-builder", action="store_true", help="skip the builder-alone run")
    parser.add_argument("--out", type=Path, help="write <out>.json with every size's result")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    results = []
    for size in args.sizes.split(","):
        given = inputs(size, args.workdir)
        result = {"size": size, "parameters": given["parameters"], "code": args.code.name}
        if not args.no_builder:
            result["builder_alone"] = builder_alone(size, given, args.workdir, env)
        result["step"] = step(size, given, args.workdir, args.code.resolve(), env)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(r["step"]["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

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
MARKERS = {"building": "builder child", "timing the export": "int4 speed, timed alone",
           "comparing the export": "int4 parity", "fp32 graph check": "fp32 graph check",
           "comparing the fp32": "fp32 graph check, comparing the cut copy", "registering": "report + registration"}
# Lines the builder prints -> the phase that starts there (create_model, then save_model's to_nbits and ir.save).
BUILDER_MARKERS = {"Reading embedding layer": "graph from the loaded weights",
                   "Saving ONNX model": "to_proto: every initializer as fp32 in one ModelProto",
                   "onnxruntime.quantization.matmul_nbits_quantizer": "int4 quantization",
                   "Saving GenAI config": "genai_config, tokenizer files"}


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


def tree_rss(pid: int) -> tuple[int, int]:
    """(RSS, anonymous RSS) summed over the process and its children. The anonymous part is what the kernel
    cannot drop under pressure: file-backed pages (mmapped safetensors, shared libraries) it can reread."""
    import psutil

    try:
        parent = psutil.Process(pid)
        pids = [parent.pid] + [c.pid for c in parent.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    rss = anon = 0
    for each in pids:
        try:
            fields = dict(line.split(":", 1) for line in Path(f"/proc/{each}/status").read_text().splitlines())
        except (OSError, ValueError):
            continue
        rss += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
        anon += int(fields.get("RssAnon", "0 kB").split()[0]) * 1024
    return rss, anon


def sampled(command: list[str], env: dict, log: Path) -> dict:
    """Run `command`; (t, rss, anonymous rss) every 0.1 s and its output lines with the time each arrived.

    Both are written as they come (`log`, and `log` with .samples), so a run stopped from outside can still
    be cut into phases (`--from-log`)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[tuple[float, str]] = []

    def read():
        with open(log, "w") as handle:
            for line in process.stdout:
                lines.append((time.perf_counter() - start, line.rstrip("\n")))
                handle.write(f"{lines[-1][0]:8.2f} {lines[-1][1]}\n")
                handle.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    samples = []
    with open(log.with_suffix(".samples"), "w") as handle:
        while process.poll() is None:
            samples.append((time.perf_counter() - start, *tree_rss(process.pid)))
            handle.write("%.2f %d %d\n" % samples[-1])
            handle.flush()
            time.sleep(0.1)
    reader.join()
    return {"rc": process.returncode, "wall_s": time.perf_counter() - start, "samples": samples, "lines": lines}


def from_log(log: Path) -> dict:
    """A run read back from the files `sampled` writes as it goes."""
    lines = [(float(line[:8]), line[9:]) for line in log.read_text().splitlines() if line[:8].strip()]
    samples = [tuple(float(x) if i == 0 else int(x) for i, x in enumerate(row.split()))
               for row in log.with_suffix(".samples").read_text().splitlines() if row.strip()]
    return {"rc": None, "wall_s": samples[-1][0] if samples else 0.0, "samples": samples, "lines": lines}


def phases(run: dict, markers: dict, first: str) -> list[dict]:
    """A run cut at the first line holding each marker: name, start, seconds, peak RSS of the tree."""
    cuts, seen = [(0.0, first)], set()
    for t, text in run["lines"]:
        for marker, name in markers.items():
            if marker in text and marker not in seen:
                seen.add(marker)
                cuts.append((t, name))
    cuts.append((run["wall_s"], None))
    out = []
    for (begin, name), (end, _) in zip(cuts, cuts[1:]):
        inside = [(rss, anon) for t, rss, anon in run["samples"] if begin <= t < end] or [(0, 0)]
        out.append({"phase": name, "start_s": round(begin, 2), "seconds": round(end - begin, 2),
                    "peak_rss_bytes": max(r for r, _ in inside), "peak_anon_rss_bytes": max(a for _, a in inside)})
    return out


def peaks(run: dict) -> dict:
    return {"peak_rss_bytes": max(r for _, r, _ in run["samples"]),
            "peak_anon_rss_bytes": max(a for _, _, a in run["samples"])}


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
    return {"rc": run["rc"], "wall_s": round(run["wall_s"], 2), **peaks(run),
            "phases": phases(run, BUILDER_MARKERS, "imports, loading the weights (from_pretrained)")}


def create_store(env: dict) -> None:
    """The MLflow store's tables, made before the step is timed: in a pipeline Export ONNX is never the first
    step to open the store (Data Prep, Fine-Tune, Evaluate and Register did), and a new SQLite store's tables
    took 2.2 s of the step's time here."""
    code = "import mlflow; mlflow.MlflowClient().search_experiments(max_results=1)"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)


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
    create_store(env)
    run = sampled(argv, env, root / size / "step.log")
    report_path = folder / "export_report" / "export_report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    shutil.rmtree(folder, ignore_errors=True)
    if run["rc"] != 0:
        print((root / size / "step.log").read_text()[-4000:], file=sys.stderr)
    return {"rc": run["rc"], "wall_s": round(run["wall_s"], 2), **peaks(run),
            "passed": report.get("passed"), "timings": report.get("timings"),
            "phases": phases(run, {f"[export_onnx] {k}": v for k, v in MARKERS.items()}, "start-up, checks, reference")}


HEADER = """# Export ONNX, phase by phase, beside onnxruntime-genai's builder alone

Written by `benchmarks/export_phases.py` (random bf16 Phi-3-architecture models of benchmarks/scale.py's shapes,
the spec's defaults: int4, cpu, block size 32, fp32 graph check on 2 layers, 8 parity prompts of 32 tokens).
Peak RSS: the process tree, sampled every 0.1 s; "anonymous" is the part the kernel cannot drop and reread
(mmapped safetensors and shared libraries are file-backed). Seconds come from a 2-core machine shared with other
jobs (each heading gives the load average, from uptime, at the run's start and end): compare seconds only between
runs made back to back at a similar load, memory across runs.

"""


def gb(value: int) -> str:
    return f"{value / 1e9:.2f} GB"


def peak_cell(entry: dict) -> str:
    anon = entry.get("peak_anon_rss_bytes")
    return gb(entry["peak_rss_bytes"]) + (f" ({gb(anon)} anonymous)" if anon else "")


def ratios(runs: dict[str, list[dict]]) -> list[str]:
    """One row per run and size with a builder-alone time: its own, or, for a run made without one
    (--no-builder), that of the run of the same round ("round N: ..." labels) that has it, measured back to
    back. The step's wall time and peak over the builder's."""
    alone = {}
    for label, results in runs.items():
        for r in results:
            if "builder_alone" in r:
                alone.setdefault((label.split(":")[0], r["size"]), (r["builder_alone"], label))
    rows = []
    for label, results in runs.items():
        for r in results:
            found = (r["builder_alone"], label) if "builder_alone" in r else alone.get((label.split(":")[0], r["size"]))
            if found is None or "step" not in r:
                continue
            builder, source = found
            note = "" if source == label else f" (builder of {source.split(':')[0]})"
            rows.append(f"| {label}{note} | {r['size']} | {builder['wall_s']:.1f} | {r['step']['wall_s']:.1f} | "
                        f"{r['step']['wall_s'] / builder['wall_s']:.2f}x | "
                        f"{r['step']['peak_rss_bytes'] / builder['peak_rss_bytes']:.2f}x |")
    if not rows:
        return []
    return ["## step / builder alone, per run", "", "| run | size | builder alone (s) | step (s) | wall time | peak RSS |",
            "|---|---|---|---|---|---|", *rows, ""]


def markdown(runs: dict[str, list[dict]]) -> str:
    """The ratios, then one table per run (label -> its results): each phase's seconds and peak, per size;
    then the slopes."""
    out = ratios(runs)
    for label, results in runs.items():
        out += [f"## {label}", "", "| size | what | seconds | peak RSS | bytes/param |", "|---|---|---|---|---|"]
        for r in results:
            n, name = r["parameters"], f"{r['size']} ({r['parameters'] / 1e6:.0f}M)"
            for key in ("builder_alone", "step"):
                if key not in r:
                    continue
                whole = r[key]
                out.append(f"| {name} | **{key.replace('_', ' ')}** | {whole['wall_s']:.1f} | "
                           f"{peak_cell(whole)} | {whole['peak_rss_bytes'] / n:.2f} |")
                out += [f"| {name} | {key.split('_')[0]}: {p['phase']} | {p['seconds']:.1f} | {peak_cell(p)} "
                        f"| {p['peak_rss_bytes'] / n:.2f} |" for p in whole.get("phases", [])]
            if "builder_alone" in r and "step" in r:
                out.append(f"| {name} | step / builder alone | {r['step']['wall_s'] / r['builder_alone']['wall_s']:.2f}x "
                           f"| {r['step']['peak_rss_bytes'] / r['builder_alone']['peak_rss_bytes']:.2f}x | |")
        if len(results) >= 2:
            a, b = results[0], results[-1]
            for key in ("builder_alone", "step"):
                if key in a and key in b:
                    slope = (b[key]["peak_rss_bytes"] - a[key]["peak_rss_bytes"]) / (b["parameters"] - a["parameters"])
                    out.append(f"\n{key.replace('_', ' ')}: peak slope {slope:.2f} bytes/param "
                               f"({a['size']} to {b['size']})")
        out.append("")
    return "\n".join(out) + "\n"


def write(out: Path, label: str | None, results: list[dict]) -> None:
    path = out.with_suffix(".json")
    runs = json.loads(path.read_text()) if path.is_file() else {}
    if label is not None:
        runs[label] = results
    path.write_text(json.dumps(runs, indent=2) + "\n")
    out.with_suffix(".md").write_text(HEADER + markdown(runs))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.2b,0.4b", help=f"comma-separated, from {', '.join(scale.SHAPES)}")
    parser.add_argument("--workdir", type=Path, default=REPO / ".maap" / "export_phases")
    parser.add_argument("--code", type=Path, default=REPO, help="checkout whose Export ONNX step runs")
    parser.add_argument("--no-builder", action="store_true", help="skip the builder-alone run")
    parser.add_argument("--out", type=Path, help="add this run's results to <out>.json under --label, and write "
                        "<out>.md from every label there")
    parser.add_argument("--label", default="results", help="what this run measured (a heading of <out>.md)")
    parser.add_argument("--from-log", type=Path, help="cut a step's log (and .samples) left by a stopped run")
    parser.add_argument("--markdown", action="store_true", help="only rewrite <out>.md from <out>.json")
    args = parser.parse_args(argv)
    if args.from_log:
        run = from_log(args.from_log)
        print(json.dumps({"log": str(args.from_log), "wall_s": run["wall_s"], **peaks(run), "phases": phases(
            run, {f"[export_onnx] {k}": v for k, v in MARKERS.items()}, "start-up, checks, reference")}))
        return 0
    if args.markdown:
        write(args.out, None, [])
        return 0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("MLFLOW_RUN_ID", None)
    results = []
    for size in args.sizes.split(","):
        given = inputs(size, args.workdir)
        result = {"size": size, "parameters": given["parameters"], "code": args.code.name}
        if not args.no_builder:
            result["builder_alone"] = builder_alone(size, given, args.workdir, env)
            print(json.dumps({"size": size, "builder_alone": result["builder_alone"]}), flush=True)
        result["step"] = step(size, given, args.workdir, args.code.resolve(), env)
        print(json.dumps(result), flush=True)
        results.append(result)
    if args.out:
        write(args.out, args.label, results)
    return 0 if all(r["step"]["rc"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

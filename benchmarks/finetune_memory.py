"""Fine-Tune's memory by phase: which part of the step holds its peak, at each model size.

Runs the `--local` pipeline (export off) on the random Phi-3 models benchmarks/scale.py builds, samples the
Fine-Tune step's processes every 0.1 s with the wall-clock time, and stops the pipeline once Fine-Tune is
done. The step's own log lines (their timestamps) cut the samples into phases:

    train   start -> "the merged model is saved in"  (load, tokenize, train, trained-model logits)
    merge   -> "merge parity:"                        (fresh base load, reference logits, merge, 16-bit copy check)
    save    -> the end                                (MLflow model save, artifacts)

    python benchmarks/finetune_memory.py record --size 0.2b --label after --work /tmp/fm
    python benchmarks/finetune_memory.py record --size 0.2b --label before --work /tmp/fm --repo <old checkout>
    python benchmarks/finetune_memory.py report /tmp/fm/*/timeline.json --out benchmarks/results/finetune-memory-...

`--repo` runs another checkout's pipeline (the code before a change) with this sampler.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
PHASES = (("train", None), ("merge", "maap_finetune.training.outputs: the merged model is saved in"),
          ("save", "maap_finetune.training.outputs: merge parity:"))
LOG_LINE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d+) \w+ (\S+): (.*)")


def finetune_rss(root) -> int:
    import psutil

    total = 0
    for proc in root.children(recursive=True):
        try:
            if "/finetune/" in proc.cwd():
                total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def record(size: str, label: str, work: Path, repo: Path) -> Path:
    import psutil

    import scale

    model, parameters = scale.build_model(size, work / "models" / size)
    run = work / f"{size}-{label}"
    (run / "tmp").mkdir(parents=True)
    argv = [sys.executable, str(repo / "pipelines" / "submit.py"), "--local"]
    for value in (f"model_path={model}", *scale.PIPELINE_SETTINGS, "export_onnx=false"):
        argv += ["--set", value]
    env = {**os.environ, "TMPDIR": str(run / "tmp"), "PYTHONUNBUFFERED": "1", "TZ": "UTC",
           "PYTHONPATH": os.pathsep.join([str(repo / "src"), str(repo)])}
    with open(run / "runner.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(argv, cwd=run, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    root, samples = psutil.Process(process.pid), []
    summary_glob = str(run / "runs" / "*" / "finetune" / "outputs" / "adapter" / "training_summary.json")
    while process.poll() is None:
        rss = finetune_rss(root)
        if rss:
            samples.append((time.time(), rss))
        if glob.glob(summary_glob) and glob.glob(str(run / "runs" / "*" / "evaluate")):
            os.killpg(process.pid, signal.SIGTERM)  # Fine-Tune is done: the rest of the pipeline is not measured
            break
        time.sleep(0.1)
    process.wait()
    events = []
    for line in open(glob.glob(str(run / "runs" / "*" / "finetune" / "logs" / "std_log.txt"))[0], errors="replace"):
        match = LOG_LINE.match(line)
        if match:
            stamp = time.mktime(time.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")) + int(match.group(2)) / 1000
            events.append((stamp, f"{match.group(3)}: {match.group(4)[:120]}"))
    summary = json.loads(Path(glob.glob(summary_glob)[0]).read_text())
    timeline = {"size": size, "label": label, "parameters": parameters, "repo": str(repo),
                "ru_maxrss_bytes": summary["peak_rss_bytes"], "samples": samples, "events": events}
    path = run / "timeline.json"
    path.write_text(json.dumps(timeline) + "\n", encoding="utf-8")
    return path


def phase_peaks(timeline: dict) -> dict:
    """Peak summed RSS in each phase, cut at the first log line that starts the next one."""
    starts = [timeline["samples"][0][0]]
    for _, marker in PHASES[1:]:
        starts.append(next(t for t, message in timeline["events"] if message.startswith(marker)))
    starts.append(float("inf"))
    peaks = {}
    for (name, _), begin, end in zip(PHASES, starts, starts[1:]):
        peaks[name] = max((rss for t, rss in timeline["samples"] if begin <= t < end), default=0)
    return peaks


def report(paths: list[Path], out: Path | None, note: str = "") -> dict:
    rows = []
    for path in paths:
        timeline = json.loads(path.read_text())
        peaks = phase_peaks(timeline)
        rows.append({"size": timeline["size"], "label": timeline["label"], "parameters": timeline["parameters"],
                     "peak_bytes": max(peaks.values()), "peak_phase": max(peaks, key=peaks.get),
                     "phases": peaks, "ru_maxrss_bytes": timeline["ru_maxrss_bytes"]})
    rows.sort(key=lambda r: (r["label"], r["parameters"]))
    slopes = {}
    for label in sorted({r["label"] for r in rows}):
        mine = [r for r in rows if r["label"] == label]
        if len(mine) >= 2:
            lo, hi = mine[0], mine[-1]
            span = hi["parameters"] - lo["parameters"]
            slopes[label] = {"peak": (hi["peak_bytes"] - lo["peak_bytes"]) / span,
                             **{p: (hi["phases"][p] - lo["phases"][p]) / span for p, _ in PHASES}}
    # Runs by their folder names only: the work folder is this machine's.
    names = " ".join(f"<work>/{path.parent.name}/timeline.json" for path in paths)
    result = {"command": f"python benchmarks/finetune_memory.py report {names}", "note": note,
              "cpus": os.cpu_count(), "load_average": list(os.getloadavg()), "runs": rows,
              "slopes_bytes_per_param": slopes}
    print(markdown(result))
    if out:
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(markdown(result), encoding="utf-8")
    return result


def markdown(result: dict) -> str:
    gb = 1e9
    lines = ["# Fine-Tune memory by phase", "",
             f"{result['cpus']} CPU cores; peak summed RSS of the Fine-Tune step's processes (sampled every 0.1 s), "
             "cut into phases by the step's log lines (benchmarks/finetune_memory.py). Pipeline settings as "
             "benchmarks/scale.py's, export off.", "", f"Command: `{result['command']}`.",
             *([result["note"]] if result.get("note") else []), "",
             "| label | size | parameters | train GB | merge GB | save GB | peak GB (phase) | process ru_maxrss GB |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["runs"]:
        p = r["phases"]
        lines.append(f"| {r['label']} | {r['size']} | {r['parameters'] / 1e6:.0f}M | {p['train'] / gb:.2f} | "
                     f"{p['merge'] / gb:.2f} | {p['save'] / gb:.2f} | {r['peak_bytes'] / gb:.2f} ({r['peak_phase']}) | "
                     f"{r['ru_maxrss_bytes'] / gb:.2f} |")
    if result["slopes_bytes_per_param"]:
        lines += ["", "Slope between the smallest and largest size (bytes/param):", "",
                  "| label | peak | train | merge | save |", "|---|---:|---:|---:|---:|"]
        for label, s in result["slopes_bytes_per_param"].items():
            lines.append(f"| {label} | {s['peak']:.2f} | {s['train']:.2f} | {s['merge']:.2f} | {s['save']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    rec = commands.add_parser("record", help="run the pipeline at one size; write <work>/<size>-<label>/timeline.json")
    rec.add_argument("--size", required=True)
    rec.add_argument("--label", required=True)
    rec.add_argument("--work", type=Path, required=True)
    rec.add_argument("--repo", type=Path, default=REPO_ROOT, help="the checkout whose pipeline runs")
    rep = commands.add_parser("report", help="phase peaks and slopes of recorded timelines")
    rep.add_argument("timelines", type=Path, nargs="+")
    rep.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    rep.add_argument("--note", default="", help="a line for the report: what each label ran")
    args = parser.parse_args(argv)
    if args.command == "record":
        print(record(args.size, args.label, args.work, args.repo.resolve()))
    else:
        report(args.timelines, args.out, args.note)


if __name__ == "__main__":
    main()

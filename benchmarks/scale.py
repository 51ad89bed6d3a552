"""What each pipeline step costs as the model grows: peak memory, peak disk and wall time per step.

Builds random Phi-3-architecture models at several sizes (vocab 32064, head size 64, intermediate
about 2.75 x hidden, no tied embeddings, saved in bf16, as Phi-3's checkpoints are), runs the whole
`--local` pipeline on each exactly as a user would, and samples every step's process tree while it
runs. Then it fits `cost = a + b x parameters` per step, extrapolates to Phi-3-mini (3.8B) and
Phi-3-medium (14B), and writes:

    benchmarks/results/scale-<machine>-<date>.json / .md / .png
    src/maap_finetune/capacity/step_costs.json      (the slopes the submit-time capacity check reads)

    python benchmarks/scale.py                       # 0.1B, 0.2B, 0.4B (about 25 minutes on 2 cores)
    python benchmarks/scale.py --sizes 0.1b --no-slopes   # one size, results only

Measured per step: memory = peak summed RSS of the step's processes (sampled every 0.25 s; shared
pages count once per process, as `ps` shows them); disk = peak growth of the run's folder plus its
TMPDIR while the step runs (outputs and temp files, the MLflow artifact store included); time = the
runner's own "done in" figure. The tokenizer is the tiny model's (a 1k-entry BPE trained locally:
nothing may be downloaded), so token counts per row are higher than Phi-3's own tokenizer gives.
The gate is off (`gate_metric=none`) so that Register and Export ONNX do their full work whatever
four steps on random weights do to the loss.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
SLOPES_FILE = REPO_ROOT / "src" / "maap_finetune" / "capacity" / "step_costs.json"
STEPS = ("data_prep", "finetune", "evaluate", "register", "export_onnx")
# The compute each step runs on in the default pipeline (pipelines/definition/inputs.py: GPU steps on --compute).
STEP_COMPUTE = {"data_prep": "cpu", "finetune": "gpu", "evaluate": "gpu", "register": "cpu", "export_onnx": "cpu"}
VOCAB = 32064
HEAD_SIZE = 64
# name -> (hidden, layers): depth grows with width, as in the Phi-3 family (3072 x 32 at 3.8B).
SHAPES = {"0.1b": (768, 8), "0.2b": (1024, 12), "0.4b": (1280, 18), "0.8b": (1536, 24), "1b": (2048, 18)}
TARGETS = {"phi-3-mini (3.8B)": 3_821_079_552, "phi-3-medium (14B)": 13_960_238_080}
PIPELINE_SETTINGS = ("finetune.max_steps=4", "max_seq_length=256", "max_eval_samples=8", "max_new_tokens=16",
                     "gate_metric=none")
GIB = 1024**3


def phi3_config(hidden: int, layers: int, tokenizer):
    from transformers import Phi3Config

    intermediate = round(2.75 * hidden / 64) * 64
    return Phi3Config(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=hidden // HEAD_SIZE, num_key_value_heads=hidden // HEAD_SIZE,
        max_position_embeddings=4096, original_max_position_embeddings=4096, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        torch_dtype="bfloat16",
    )


def build_model(name: str, dest: Path) -> tuple[Path, int]:
    """A random bf16 Phi-3 of shape SHAPES[name] with the tiny model's tokenizer; (folder, parameters)."""
    import torch
    from transformers import GenerationConfig, Phi3ForCausalLM

    from maap_finetune.models.tiny import build_tokenizer

    marker = dest / "parameters.txt"
    if marker.is_file():
        return dest, int(marker.read_text())
    tokenizer = build_tokenizer([REPO_ROOT / "data" / "sample" / "chat.jsonl"])
    config = phi3_config(*SHAPES[name], tokenizer)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # initialise in bf16: half the memory and the same saved file
    try:
        model = Phi3ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|end|>")])
    parameters = sum(p.numel() for p in model.parameters())
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    marker.write_text(str(parameters))
    return dest, parameters


def folder_bytes(folder: Path) -> int:
    total = 0
    stack = [str(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # removed while we looked
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return total


@dataclass
class StepSample:
    peak_rss_bytes: int = 0
    peak_disk_bytes: int = 0
    disk_at_start: int | None = None
    first_seen_s: float | None = None
    last_seen_s: float | None = None
    processes: set = field(default_factory=set)


class TreeMonitor:
    """Samples a process tree; each process is charged to the step whose runs/<run>/<step>/ folder is its cwd."""

    def __init__(self, root_pid: int, disk_roots: list[Path], interval_s: float = 0.25, disk_every: int = 4):
        self.root_pid, self.disk_roots, self.interval_s, self.disk_every = root_pid, disk_roots, interval_s, disk_every
        self.steps: dict[str, StepSample] = {}
        self.runner_peak_rss = 0
        self._step_of: dict[int, str | None] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._start = time.monotonic()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _step(self, proc) -> str | None:
        if proc.pid not in self._step_of:
            try:
                cwd = proc.cwd()
            except Exception:  # noqa: BLE001 - gone or not ours: not charged to a step
                return None
            match = re.search(r"/runs/[^/]+/([^/]+)(/|$)", cwd)
            self._step_of[proc.pid] = match.group(1) if match else None
        return self._step_of[proc.pid]

    def _loop(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
        except psutil.NoSuchProcess:
            return
        tick = 0
        while not self._stop.is_set():
            now = time.monotonic() - self._start
            rss: dict[str, int] = {}
            runner = 0
            try:
                tree = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in tree:
                try:
                    value = proc.memory_info().rss
                except psutil.Error:
                    continue
                step = self._step(proc) if proc.pid != self.root_pid else None
                if step is None:
                    runner += value
                else:
                    rss[step] = rss.get(step, 0) + value
                    self.steps.setdefault(step, StepSample()).processes.add(proc.pid)
            self.runner_peak_rss = max(self.runner_peak_rss, runner)
            disk = sum(folder_bytes(p) for p in self.disk_roots) if tick % self.disk_every == 0 else None
            for step, value in rss.items():
                sample = self.steps[step]
                sample.peak_rss_bytes = max(sample.peak_rss_bytes, value)
                sample.first_seen_s = now if sample.first_seen_s is None else sample.first_seen_s
                sample.last_seen_s = now
                if disk is not None:
                    sample.disk_at_start = disk if sample.disk_at_start is None else sample.disk_at_start
                    sample.peak_disk_bytes = max(sample.peak_disk_bytes, disk - sample.disk_at_start)
            tick += 1
            self._stop.wait(self.interval_s)


def run_pipeline(model_dir: Path, workdir: Path, extra_sets: list[str], log_path: Path) -> dict:
    """One `--local` run in a fresh `workdir`; per-step peak RSS, peak disk and seconds."""
    workdir.mkdir(parents=True, exist_ok=False)
    tmp = workdir / "tmp"
    tmp.mkdir()
    sets = [f"model_path={model_dir}", *PIPELINE_SETTINGS, *extra_sets]
    argv = [sys.executable, str(REPO_ROOT / "pipelines" / "submit.py"), "--local"]
    for value in sets:
        argv += ["--set", value]
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(argv, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
        with TreeMonitor(process.pid, [workdir]) as monitor:
            code = process.wait()
    text = log_path.read_text(encoding="utf-8", errors="replace")
    seconds = {m.group(1): float(m.group(2)) for m in re.finditer(r"^\[\d+/\d+\] (\w+): done in ([\d.]+) s", text, re.M)}
    steps = {}
    for name in STEPS:
        sample = monitor.steps.get(name, StepSample())
        seen = (sample.last_seen_s - sample.first_seen_s) if sample.first_seen_s is not None else None
        steps[name] = {"peak_rss_bytes": sample.peak_rss_bytes, "peak_disk_bytes": sample.peak_disk_bytes,
                       "seconds": seconds.get(name, seen), "processes": len(sample.processes),
                       "completed": name in seconds}
    return {"exit_code": code, "export": export_timings(workdir), "wall_s": time.monotonic() - start,
            "runner_peak_rss_bytes": monitor.runner_peak_rss,
            "settings": sets[1:], "log": str(log_path), "steps": steps}


def export_timings(workdir: Path) -> dict | None:
    """Export ONNX's own split of its time (export_report.json): the builder, the comparison with Evaluate's
    reference, the fp32 graph check; with the step's wall time this says what is not the builder."""
    reports = sorted(workdir.glob("runs/*/export_onnx/outputs/export_report/export_report.json"))
    if not reports:
        return None
    report = json.loads(reports[-1].read_text(encoding="utf-8"))
    return {"timings_s": report.get("timings"), "passed": report.get("passed"), "failures": report.get("failures")}


def export_time_split(sizes: list[dict]) -> dict:
    """Per size: the step's seconds against the builder's; each part fitted linearly and extrapolated."""
    rows, parts = [], {}
    for s in sizes:
        timings = (s["run"].get("export") or {}).get("timings_s") or {}
        step = s["run"]["steps"]["export_onnx"]["seconds"]
        if not timings.get("build_s") or not step:
            continue
        other = step - sum(timings.values())
        rows.append({"size": s["name"], "parameters": s["parameters"], "step_s": step, **timings, "other_s": other,
                     "step_over_build": step / timings["build_s"]})
        for key, value in {**timings, "other_s": other, "step_s": step}.items():
            parts.setdefault(key, []).append((s["parameters"], value))
    predicted = {}
    for target, n in TARGETS.items():
        line = {key: fit([x for x, _ in v], [y for _, y in v]) for key, v in parts.items() if len(v) >= 2}
        at = {key: value["intercept_bytes"] + value["bytes_per_param"] * n for key, value in line.items()}
        if at.get("build_s"):
            predicted[target] = {**at, "step_over_build": at["step_s"] / at["build_s"]}
    return {"measured": rows, "extrapolated": predicted}


def fit(xs: list[float], ys: list[float]) -> dict:
    """Least squares `y = a + b x` (b clipped at 0: a cost cannot shrink as the model grows)."""
    n = len(xs)
    if n < 2:
        return {"intercept_bytes": ys[0] if ys else 0.0, "bytes_per_param": 0.0, "r2": None}
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx else 0.0
    if slope < 0:
        slope, intercept = 0.0, max(ys)
    else:
        intercept = mean_y - slope * mean_x
    ss_tot = sum((y - mean_y) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    return {"intercept_bytes": intercept, "bytes_per_param": slope, "r2": 1 - ss_res / ss_tot if ss_tot else None}


def fits(sizes: list[dict]) -> dict:
    params = [s["parameters"] for s in sizes]
    out = {}
    for step in STEPS:
        out[step] = {kind: fit(params, [s["run"]["steps"][step][f"peak_{kind}_bytes"] for s in sizes])
                     for kind in ("rss", "disk")}
        out[step]["predicted"] = {
            target: {kind: out[step][kind]["intercept_bytes"] + out[step][kind]["bytes_per_param"] * n
                     for kind in ("rss", "disk")}
            for target, n in TARGETS.items()}
    return out


def machine() -> str:
    import psutil

    return (f"{os.cpu_count()} CPU cores ({platform.machine()}), {psutil.virtual_memory().total / GIB:.0f} GiB, no GPU, "
            f"Python {platform.python_version()}")


def write_slopes(result: dict, json_path: Path) -> None:
    costs = {
        "schema_version": 1,
        "source": str(json_path.relative_to(REPO_ROOT)),
        "measured_on": result["machine"],
        "base_dtype": "bfloat16",
        "sizes_params": [s["parameters"] for s in result["sizes"]],
        "steps": {step: {"compute": STEP_COMPUTE[step],
                         "memory": {k: result["fits"][step]["rss"][k] for k in ("intercept_bytes", "bytes_per_param")},
                         "disk": {k: result["fits"][step]["disk"][k] for k in ("intercept_bytes", "bytes_per_param")}}
                  for step in STEPS},
    }
    SLOPES_FILE.parent.mkdir(parents=True, exist_ok=True)
    SLOPES_FILE.write_text(json.dumps(costs, indent=2) + "\n", encoding="utf-8")


def plot(result: dict, png: Path, vm_lines: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    xs = [s["parameters"] for s in result["sizes"]]
    grid = [1e8 * 1.1**i for i in range(0, 60) if 1e8 * 1.1**i <= 1.6e10]
    for step in STEPS:
        ys = [s["run"]["steps"][step]["peak_rss_bytes"] / GIB for s in result["sizes"]]
        line = result["fits"][step]["rss"]
        points = ax.plot(xs, ys, "o")[0]
        ax.plot(grid, [(line["intercept_bytes"] + line["bytes_per_param"] * x) / GIB for x in grid], "--",
                color=points.get_color(), label=f"{step} ({line['bytes_per_param']:.1f} B/param)")
    for label, gib in vm_lines.items():
        ax.axhline(gib, color="grey", linewidth=0.8)
        ax.text(grid[0], gib * 1.04, label, fontsize=8, color="dimgrey")
    for target, n in TARGETS.items():
        ax.axvline(n, color="lightgrey", linewidth=0.8, linestyle=":")
        ax.text(n, ax.get_ylim()[1] * 0.5, target, rotation=90, fontsize=8, color="dimgrey", ha="right")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (bf16 base)")
    ax.set_ylabel("peak RSS of the step's processes (GiB)")
    ax.set_title("Peak memory per pipeline step: measured (dots), fitted and extrapolated (dashes)")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def vm_memory_lines() -> dict[str, float]:
    """The default clusters' memory (infra/main.bicep), read from the VM table when it is there."""
    table = REPO_ROOT / "src" / "maap_finetune" / "capacity" / "vm_sizes.json"
    bicep = (REPO_ROOT / "infra" / "main.bicep").read_text(encoding="utf-8")
    defaults = dict(re.findall(r"param (\w+VmSize) string = '(\w+)'", bicep))
    lines = {}
    if table.is_file():
        sizes = json.loads(table.read_text(encoding="utf-8"))
        rows = sizes.get("sizes", sizes) if isinstance(sizes, dict) else {}
        for param, name in defaults.items():
            row = rows.get(name) if isinstance(rows, dict) else None
            if isinstance(row, dict) and row.get("memory_gib"):
                lines[f"{name} ({param}, {row['memory_gib']} GiB)"] = float(row["memory_gib"])
    return lines or {"Standard_DS3_v2 (14 GiB)": 14.0}


def export_split_lines(split: dict) -> list[str]:
    if not split.get("measured"):
        return []
    lines = ["Export ONNX's time (its export_report.json's timings; build call = the builder's build in the step's "
             "build child, whose imports the fp32 graph check's part has already paid, so it is shorter than the "
             "builder run alone that benchmarks/export_phases.py measures; other = imports, staging, hashing, "
             "registering):", "",
             "| size | step s | build call s | compare s | fp32 graph check s | other s | step / build call |",
             "|---|---|---|---|---|---|---|"]
    for row in split["measured"]:
        lines.append(f"| {row['size']} ({row['parameters'] / 1e6:.0f}M) | {row['step_s']:.1f} | {row['build_s']:.1f} | "
                     f"{row.get('compare_s', 0):.1f} | {row.get('fp32_graph_check_s', 0):.1f} | {row['other_s']:.1f} | "
                     f"{row['step_over_build']:.1f}x |")
    for target, row in split["extrapolated"].items():
        lines.append(f"| {target}, each part extrapolated linearly | {row['step_s']:.0f} | {row['build_s']:.0f} | "
                     f"{row.get('compare_s', 0):.0f} | {row.get('fp32_graph_check_s', 0):.0f} | {row.get('other_s', 0):.0f} | "
                     f"{row['step_over_build']:.1f}x |")
    return [*lines, ""]


def markdown(result: dict, stem: str) -> str:
    gb = 1e9
    rows = ["| step | " + " | ".join(f"{s['name']} ({s['parameters'] / 1e6:.0f}M)" for s in result["sizes"])
            + " | slope (bytes/param) | at 3.8B | at 14B |", "|---" * (4 + len(result["sizes"])) + "|"]
    for kind, unit in (("rss", "memory"), ("disk", "disk")):
        for step in STEPS:
            cells = []
            for s in result["sizes"]:
                m = s["run"]["steps"][step]
                cells.append(f"{m[f'peak_{kind}_bytes'] / gb:.2f} GB" + (f", {m['seconds']:.0f} s" if kind == "rss" and m["seconds"] else ""))
            line = result["fits"][step][kind]
            predicted = result["fits"][step]["predicted"]
            rows.append(f"| {step} {unit} | " + " | ".join(cells) + f" | {line['bytes_per_param']:.2f} | "
                        + " | ".join(f"{predicted[t][kind] / gb:.1f} GB" for t in TARGETS) + " |")
    return "\n".join([
        f"# Scale: each pipeline step's cost against model size ({result['date']})", "",
        f"Machine: {result['machine']}. Command: `python benchmarks/scale.py {' '.join(result['argv'])}`.",
        f"Pipeline settings: `{' '.join('--set ' + s for s in PIPELINE_SETTINGS)}`; random Phi-3-architecture models "
        "(vocab 32064, head size 64, intermediate ~2.75 x hidden), saved in bf16; the tiny model's tokenizer.", "",
        "Memory: peak summed RSS of the step's processes; disk: peak growth of the run folder plus TMPDIR during "
        "the step; time: the runner's \"done in\". Fitted `a + b x parameters`, extrapolated to the targets. "
        "The wall times are from a shared 2-core machine: read them as an order of magnitude.", "",
        *rows, "",
        f"![memory against parameters]({stem}.png)", "",
        *export_split_lines(result.get("export_time_split") or {}),
        "Runs: " + "; ".join(f"{s['name']}: exit {s['run']['exit_code']}, {s['run']['wall_s']:.0f} s"
                             for s in result["sizes"]),
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="0.1b,0.2b,0.4b", help=f"comma-separated, from {', '.join(SHAPES)}")
    parser.add_argument("--workdir", type=Path, default=REPO_ROOT / ".maap" / "scale",
                        help="models and runs go here (default .maap/scale)")
    parser.add_argument("--set", action="append", default=[], help="extra --set for every run")
    parser.add_argument("--machine-tag", default=f"cpu{os.cpu_count()}")
    parser.add_argument("--no-slopes", action="store_true", help="do not rewrite src/maap_finetune/capacity/step_costs.json")
    parser.add_argument("--from-json", type=Path, help="re-render the .md/.png (and the slopes) of an earlier result")
    args = parser.parse_args(argv)
    if args.from_json:
        args.from_json = args.from_json.resolve()
        result = json.loads(args.from_json.read_text(encoding="utf-8"))
        for size in result["sizes"]:  # a result written before Export's timings were recorded: read them now
            if "export" not in size["run"]:
                size["run"]["export"] = export_timings(Path(size["run"]["log"]).with_suffix(""))
        result["fits"] = fits(result["sizes"])
        result["export_time_split"] = export_time_split(result["sizes"])
        return write_results(result, args.from_json.with_suffix(""), not args.no_slopes)
    names = [n.strip() for n in args.sizes.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        parser.error(f"unknown size {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    sys.path[:0] = [str(REPO_ROOT / "src"), str(REPO_ROOT)]
    date = dt.date.today().isoformat()
    stamp = dt.datetime.now().strftime("%H%M%S")
    sizes = []
    for name in names:
        model_dir, parameters = build_model(name, args.workdir / "models" / name)
        print(f"[scale] {name}: {parameters / 1e6:.1f}M parameters at {model_dir}; running the pipeline", flush=True)
        workdir = args.workdir / f"run-{name}-{stamp}"
        run = run_pipeline(model_dir, workdir, args.set, args.workdir / f"run-{name}-{stamp}.log")
        print(f"[scale] {name}: exit {run['exit_code']} in {run['wall_s']:.0f} s: " + ", ".join(
            f"{k} {v['peak_rss_bytes'] / 1e9:.2f} GB / {v['peak_disk_bytes'] / 1e9:.2f} GB disk / {v['seconds']} s"
            for k, v in run["steps"].items()), flush=True)
        sizes.append({"name": name, "parameters": parameters, "shape": dict(zip(("hidden", "layers"), SHAPES[name])),
                      "run": run})
    result = {"date": date, "machine": machine(), "argv": argv if argv is not None else sys.argv[1:],
              "pipeline_settings": list(PIPELINE_SETTINGS), "sizes": sizes, "fits": fits(sizes) if sizes else {},
              "export_time_split": export_time_split(sizes), "targets": TARGETS}
    return write_results(result, RESULTS_DIR / f"scale-{args.machine_tag}-{date}", not args.no_slopes)


def write_results(result: dict, base: Path, slopes: bool) -> int:
    """<base>.json/.md/.png, the slopes file when asked (two sizes or more); 1 when a size's pipeline failed."""
    sizes, stem = result["sizes"], base.name
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path = base.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2, default=list) + "\n", encoding="utf-8")
    plot(result, base.with_suffix(".png"), vm_memory_lines())
    base.with_suffix(".md").write_text(markdown(result, stem), encoding="utf-8")
    if slopes and len(sizes) >= 2:
        write_slopes(result, json_path)
    print(f"[scale] wrote {json_path} (.md, .png)" + (f" and {SLOPES_FILE}" if slopes else ""), flush=True)
    failed = [s["name"] for s in sizes if s["run"]["exit_code"] != 0]
    if failed:
        print(f"[scale] the pipeline failed at {', '.join(failed)}: see the logs", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

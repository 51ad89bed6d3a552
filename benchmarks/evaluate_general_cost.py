"""What the general-ability figures add to Evaluate: the step run as the local pipeline ran it, alternated with
`general_max_new_tokens 0` (drift off) and the default, several rounds, wall and CPU time of each run. On a shared
machine the load moves between runs, so the figure to read is the one measured inside each default run: the time
its general-ability hooks took (metrics.json's general.cost) over that run's own time.

    python benchmarks/evaluate_general_cost.py --run runs/<id> [--rounds 3]

`--run` is a local pipeline run folder (`python pipelines/submit.py --local` writes one): its Evaluate step's
command (its inputs: prepared data, fine-tuned and base model) is replayed on a fresh snapshot of this checkout's
Evaluate component, as its additional_includes make it, with the evaluation written to a temporary folder and
MLflow pointed at a temporary SQLite store (migrated by one warm-up run that is not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def snapshot(folder: Path) -> Path:
    """The Evaluate component's code folder plus its additional_includes, as Azure ML and the local runner copy them."""
    import yaml

    component = REPO / "components" / "evaluate"
    shutil.copytree(component, folder)
    for include in yaml.safe_load((component / "spec.yaml").read_text())["additional_includes"]:
        source = (component / include).resolve()
        (shutil.copytree if source.is_dir() else shutil.copy)(source, folder / source.name)
    return folder


def general_defaults() -> dict[str, object]:
    """The general-ability inputs' defaults from Evaluate's spec.yaml (a run made before they existed lacks them)."""
    import yaml

    inputs = yaml.safe_load((REPO / "components" / "evaluate" / "spec.yaml").read_text())["inputs"]
    return {name: spec["default"] for name, spec in inputs.items()
            if ("general" in name or "benchmark" in name) and "default" in spec}


def flags(values: dict[str, object]) -> str:
    return " ".join(f"--{name} {value}" for name, value in values.items())


def replay(command: str, cwd: str, evaluation: Path, extra: str, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child) of one Evaluate run."""
    original = sys.executable + " " + command.split("--evaluation ", 1)[0].removeprefix("python ")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["bash", "-c", f"{original} {extra} --evaluation '{evaluation}'"], cwd=cwd, env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    step = json.loads((args.run / "evaluate" / "command.json").read_text())
    defaults = general_defaults()
    variants = {"drift off": flags({**defaults, "general_max_new_tokens": 0}), "default": flags(defaults)}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    inside: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db"}
        env.pop("MLFLOW_RUN_ID", None)
        cwd = str(snapshot(Path(scratch) / "snapshot"))
        replay(step["command"], cwd, Path(scratch) / "warmup", variants["default"], env)
        for round_ in range(args.rounds):
            order = list(variants) if round_ % 2 == 0 else list(reversed(variants))
            for name in order:
                times[name].append(replay(step["command"], cwd, Path(scratch) / f"{name}-{round_}",
                                          variants[name], env))
                if name == "default":
                    metrics = json.loads((Path(scratch) / f"{name}-{round_}" / "metrics.json").read_text())
                    cost = metrics["general"]["cost"]
                    inside.append({"wall": cost["wall_s"] / times[name][-1][0], "cpu": cost["cpu_s"] / times[name][-1][1]})
                print(f"round {round_ + 1} {name}: wall {times[name][-1][0]:.1f} s, CPU {times[name][-1][1]:.1f} s",
                      flush=True)
    median = {name: {"wall_s": statistics.median(w for w, _ in runs), "cpu_s": statistics.median(c for _, c in runs)}
              for name, runs in times.items()}
    added = {kind: (median["default"][kind] - median["drift off"][kind]) / median["default"][kind]
             for kind in ("wall_s", "cpu_s")}
    share = {kind: statistics.median(run[kind] for run in inside) for kind in ("wall", "cpu")}
    result = {"machine": f"{platform.machine()} {os.cpu_count()} cores", "load_average": os.getloadavg(),
              "rounds": args.rounds, "runs": times, "median": median,
              "share_of_step_added_between_runs": added, "share_of_step_inside_each_run": inside,
              "share_of_step_inside_median": share}
    print(f"between runs (drift off vs default): {added['wall_s']:.1%} of wall time, {added['cpu_s']:.1%} of CPU "
          f"time; inside each default run: {share['wall']:.1%} of wall, {share['cpu']:.1%} of CPU "
          f"(medians of {args.rounds} alternated rounds)")
    out = RESULTS / f"evaluate-general-cost-cpu{os.cpu_count()}-{date.today().isoformat()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run a `PipelineJob` on this machine the way Azure ML runs it.

For each node, in dependency order (read from the inputs that bind
`${{parent.jobs.<node>.outputs.<port>}}`), the runner:
1. copies the component's code folder and each `additional_includes` entry into a per-run snapshot
   (`runs/<run-id>/<node>/snapshot`), as Azure ML uploads one;
2. resolves the command as text, as Azure ML does: `$[[...]]` blocks are kept when every input they
   reference has a value and dropped otherwise, `${{inputs.*}}` / `${{outputs.*}}` are replaced by
   values and paths verbatim (outputs under `runs/<run-id>/<node>/outputs/<port>`), with no quoting
   added: the component YAML quotes what needs it, so a quoting bug fails here as in a workspace;
3. runs it with `bash -c` in its own process group, with the snapshot as the working directory,
   `python` on PATH meaning this interpreter (`sys.executable`), `PYTHONPATH` inherited with the
   snapshot in front, the node's `environment_variables`, and the environment Azure ML sets: `MLFLOW_TRACKING_URI`, `MLFLOW_RUN_ID` (a child run of the pipeline's
   run, tagged `mlflow.parentRunId`) and, for PyTorch-distributed nodes, one process per rank with
   `MASTER_ADDR`, `MASTER_PORT`, `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `LOCAL_WORLD_SIZE`, `NODE_RANK`.

`instance_count > 1` runs every node's processes on this machine with its NODE_RANK: the processes
see exactly the ranks and world size they would see on a cluster, which is what the local run is for
(the rank arithmetic and the rendezvous are exercised); only the hardware is shared.

A failing process stops its step (its sibling ranks are terminated) and the run: `StepFailed` carries
the step name, the exit code and the tail of the log. Ctrl-C or SIGTERM (`timeout`, CI, schedulers)
ends every step's process group and marks the MLflow runs KILLED (`Terminated` for SIGTERM). A new
SQLite store is created under a file lock (`<db>.lock`), so runs started together do not race its
migrations.

`run_pipeline()` runs any PipelineJob: a command node with `step.run_step`, a sweep node with
`sweep.run_sweep_step` (the choice is made here, above both). The local defaults (sample data, tiny Phi-3
model, `sqlite:///mlruns.db`, `LOCAL_PROFILE`) are in `defaults.py`, applied by `submit.py --local`.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pipelines.local.plan import StepResult, plan_pipeline
from pipelines.local.processes import sigterm_unwinds
from pipelines.local.step import bookkeeping, run_step
from pipelines.local.sweep import run_sweep_step
from pipelines.local.tracking import DEFAULT_TRACKING_URI, Tracking, absolute_tracking_uri, run_status

RUNS_DIR = Path("runs")


@dataclass
class LocalRunResult:
    run_id: str
    run_dir: Path
    tracking_uri: str
    experiment_name: str
    mlflow_run_id: str | None
    steps: dict[str, StepResult] = field(default_factory=dict)
    seconds: float = 0.0


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _open_tracking(tracking_uri: str | None, workdir: Path, experiment_name: str, out: TextIO) -> Tracking | None:
    """The store's client (None without MLflow), after marking KILLED the runs of runners that died."""
    if not tracking_uri:
        return None
    tracking = Tracking(absolute_tracking_uri(tracking_uri, workdir), experiment_name)
    orphaned = tracking.mark_orphaned_runs()
    if orphaned:
        print(f"marked {len(orphaned)} run(s) KILLED: their runner is no longer alive", file=out, flush=True)
    return tracking


def run_pipeline(
    job,
    *,
    workdir: Path | str = ".",
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    experiment_name: str | None = None,
    run_id: str | None = None,
    out: TextIO = sys.stdout,
    stream: bool = False,
    env: Mapping[str, str] | None = None,
) -> LocalRunResult:
    """Run every node of `job` on this machine; outputs under `<workdir>/runs/<run-id>/<node>/`.

    `tracking_uri=None` runs without MLflow (the steps then get no MLFLOW_* variables).
    `env` adds environment variables to every step (after this process's own, before the runner's).
    """
    workdir = Path(workdir).resolve()
    steps = plan_pipeline(job)
    run_id = run_id or new_run_id()
    run_dir = workdir / RUNS_DIR / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    experiment_name = experiment_name or job.experiment_name or "maap-finetune"
    tracking = _open_tracking(tracking_uri, workdir, experiment_name, out)
    result = LocalRunResult(run_id, run_dir, tracking.uri if tracking else "", experiment_name, None)
    if tracking is not None:
        result.mlflow_run_id = tracking.start(
            job.display_name or job.name or "pipeline", {"maap.local_run_id": run_id, "maap.run_dir": str(run_dir)}
        )
        tracking.log_params(result.mlflow_run_id, {n: i.result() for n, i in job.inputs.items()})
    start = time.monotonic()
    with sigterm_unwinds():
        ok = False
        error: BaseException | None = None
        try:
            for index, step in enumerate(steps, 1):
                run = run_sweep_step if step.sweep is not None else run_step  # a sweep node runs its trials
                result.steps[step.name] = run(
                    step,
                    run_dir / step.name,
                    result.steps,
                    tracking=tracking,
                    parent_run_id=result.mlflow_run_id,
                    out=out,
                    stream=stream,
                    label=f"[{index}/{len(steps)}] ",
                    env=env,
                )
            ok = True
        except BaseException as err:
            error = err
            raise
        finally:
            result.seconds = time.monotonic() - start
            if tracking is not None and result.mlflow_run_id:
                bookkeeping(f"ending the pipeline's MLflow run {result.mlflow_run_id}",
                            lambda: tracking.finish(result.mlflow_run_id, run_status(ok, error)), error)
    return result

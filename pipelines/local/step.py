"""One step on this machine: snapshot its code, resolve its command, run its processes, and say how it went."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

from maap_finetune.common.errors import UserError
from maap_finetune.common.progress import PROGRESS_ENV, PROGRESS_FILE, ProgressDisplay, read_new_bytes
from pipelines.definition.command import format_value, render_command
from pipelines.definition.inputs import PATH_TYPES, is_local_path
from pipelines.local.plan import StepPlan, StepResult
from pipelines.local.processes import (
    DIST_VARS,
    STEP_GUARD,
    free_port,
    interpreter_shims,
    process_environments,
    terminate,
)
from pipelines.local.tracking import Tracking, run_status, tracking_paths

LOG_TAIL_LINES = 40
HEARTBEAT_S = 30.0


class StepFailed(Exception):
    """A step exited non-zero. The message names the step, the exit code, the cause when the runner sees one
    (a full disk), the log's tail, and after it any of the runner's own bookkeeping errors, one line each."""

    def __init__(self, step: str, exit_code: int, log_path: Path, tail: str, rank: int | None = None,
                 cause: str | None = None):
        self.step, self.exit_code, self.log_path, self.tail, self.rank = step, exit_code, log_path, tail, rank
        self.cause = cause
        self.notes: list[str] = []
        super().__init__(step, exit_code)

    def __repr__(self) -> str:
        return f"StepFailed({str(self)!r})"

    def __str__(self) -> str:
        which = f"step {self.step!r}" + (f" (rank {self.rank})" if self.rank is not None else "")
        cause = f": {self.cause}" if self.cause else ""
        quoted = "\n".join(f"  | {line}" for line in self.tail.splitlines()) or "  | (empty)"
        notes = "".join(f"\n{note}" for note in self.notes)
        return f"{which} failed with exit code {self.exit_code}{cause}; log: {self.log_path}\n  last lines of the log:\n{quoted}{notes}"


LOW_SPACE_BYTES = 1 << 20


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def disk_full_cause(*paths: Path) -> str | None:
    """'no space left on device: ...' naming the first of `paths` whose filesystem is (nearly) full, or None."""
    for path in paths:
        try:
            stat = os.statvfs(path)
        except OSError:
            continue
        free = stat.f_bavail * stat.f_frsize
        if free < LOW_SPACE_BYTES:
            return (f"no space left on device: {path} is on {_mount_point(Path(path))}, which has {free} bytes free; "
                    f"free space there and rerun")
    return None


def bookkeeping(what: str, action: Callable[[], Any], error: BaseException | None) -> None:
    """Run the runner's own MLflow bookkeeping; when the step already failed, a failure here is one line
    after the step's error (MLflow's own traceback logging silenced) instead of tracebacks that hide it."""
    import logging

    if not isinstance(error, StepFailed):
        action()
        return
    db_log = logging.getLogger("mlflow.store.db.utils")
    level = db_log.level
    db_log.setLevel(logging.CRITICAL)
    try:
        action()
    except Exception as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        # SQLAlchemy's first line is advice; the driver's own error reads "(sqlite3.OperationalError) ..."
        cause = next((line for line in lines if re.match(r"^\([\w.]+(Error|Exception)\) ", line)), lines[0] if lines else "")
        error.notes.append(f"runner bookkeeping: {what} failed: {type(err).__name__}: {cause}")
    finally:
        db_log.setLevel(level)


def snapshot_code(step: StepPlan, dest: Path) -> Path:
    """Copy the code folder and every additional include into `dest`, as Azure ML builds a snapshot."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".git", ".pytest_cache")
    if not step.code_dir.is_dir():
        raise UserError(f"step {step.name!r}: code folder {step.code_dir} does not exist")
    shutil.copytree(step.code_dir, dest, ignore=ignore)
    for include in step.includes:
        target = dest / include.name
        if not include.exists():
            raise UserError(f"step {step.name!r}: additional include {include} does not exist")
        if target.exists():
            raise UserError(f"step {step.name!r}: additional include {include.name!r} clashes with {target.name!r} in the code folder")
        if include.is_dir():
            shutil.copytree(include, target, ignore=ignore)
        else:
            shutil.copy2(include, target)
    return dest


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _step_inputs(step: StepPlan, results: Mapping[str, StepResult]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name, binding in step.bindings.items():
        if binding.kind == "output":
            values[name] = str(results[binding.node].outputs[binding.port])
            continue
        value = binding.value if binding.kind == "value" else getattr(step.input_specs[name], "default", None)
        spec_type = getattr(step.input_specs[name], "type", None)
        rendered = None if value is None else format_value(value)
        if rendered is not None and spec_type in PATH_TYPES:
            if not is_local_path(rendered):
                raise UserError(
                    f"step {step.name!r}: input {name!r} is {rendered}; the local runner reads local files and folders only"
                )
            rendered = str(Path(rendered).expanduser().resolve())
        values[name] = rendered
    return values


def _step_outputs(step: StepPlan, step_dir: Path) -> dict[str, Path]:
    outputs: dict[str, Path] = {}
    for name, spec in step.output_specs.items():
        path = step_dir / "outputs" / name
        if getattr(spec, "type", None) == "uri_file":
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            path.mkdir(parents=True, exist_ok=True)
        outputs[name] = path.resolve()
    return outputs


def _base_environment(
    snapshot: Path, tracking: Tracking | None, run_id: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    for name in DIST_VARS:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(snapshot)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if tracking is not None and run_id is not None:
        env["MLFLOW_TRACKING_URI"] = tracking.uri
        env["MLFLOW_RUN_ID"] = run_id
        env["MLFLOW_EXPERIMENT_ID"] = tracking.experiment_id
        env["MLFLOW_EXPERIMENT_NAME"] = tracking.experiment_name
    return env


def run_step(
    step: StepPlan,
    step_dir: Path,
    results: Mapping[str, StepResult],
    *,
    tracking: Tracking | None = None,
    parent_run_id: str | None = None,
    out: TextIO = sys.stdout,
    stream: bool = False,
    label: str = "",
    env: Mapping[str, str] | None = None,
    stop: Callable[[], None] | None = None,
    live_progress: bool = True,
) -> StepResult:
    """Snapshot, resolve and run one step; raise StepFailed when any of its processes fails.

    `stop` is called about 5 times a second while the step runs; what it raises ends the step's processes and
    propagates (a sweep ends a trial its early-termination policy stopped). `live_progress=False` leaves out
    the updating progress line (trials running side by side)."""
    start = time.monotonic()
    snapshot, outputs, argv = _prepare(step, step_dir, results)
    logs_dir = step_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    mlflow_run_id = _start_run(tracking, step, parent_run_id)
    env = _base_environment(snapshot, tracking, mlflow_run_id, {**(env or {}), **step.environment_variables})
    env["PATH"] = os.pathsep.join([str(interpreter_shims(step_dir.parent / ".bin")), env.get("PATH", os.defpath)])
    env[PROGRESS_ENV] = str(logs_dir / PROGRESS_FILE)  # live progress, shown by ProgressDisplay
    per_process = _per_process(step, env)
    world = len(per_process)
    log_paths = _announce(step, logs_dir, world, label, out)
    processes: list[subprocess.Popen] = []
    handles: list = []
    ok, error = False, None
    # With --stream the log itself is shown; an updating line would cut into it.
    progress = None if stream or not live_progress else ProgressDisplay(logs_dir / PROGRESS_FILE, out, label=f"{step.name}: ")

    def tick() -> bool:
        if stop is not None:
            stop()
        return progress.poll() if progress is not None else False

    try:
        _launch(argv, snapshot, env, per_process, log_paths, processes, handles)
        failed = _wait(processes, log_paths[0], start, step.name, out, stream, tick)
        if failed is not None:
            rank, code = failed
            cause = disk_full_cause(step_dir, *(Path(p) for p in tracking_paths(tracking)), Path(tempfile.gettempdir()))
            raise StepFailed(step.name, code, log_paths[rank], tail(log_paths[rank]), rank if world > 1 else None, cause)
        ok = True
    except BaseException as err:
        error = err
        raise
    finally:
        _close(processes, progress, handles)
        if tracking is not None and mlflow_run_id is not None:
            bookkeeping(f"ending MLflow run {mlflow_run_id} of {step.name}",
                         lambda: tracking.finish(mlflow_run_id, run_status(ok, error)), error)
    seconds = time.monotonic() - start
    print(f"{label}{step.name}: done in {seconds:.1f} s", file=out, flush=True)
    return StepResult(step.name, seconds, outputs, log_paths, mlflow_run_id)


def _announce(step: StepPlan, logs_dir: Path, world: int, label: str, out: TextIO) -> list[Path]:
    """Each process's log file, and the line saying the step runs and where its log is."""
    log_paths = [logs_dir / ("std_log.txt" if world == 1 else f"std_log_process_{rank}.txt") for rank in range(world)]
    where = log_paths[0] if world == 1 else logs_dir
    nodes_note = f", {step.instance_count} nodes simulated on this machine" if step.instance_count > 1 else ""
    print(f"{label}{step.name}: running ({world} process{'es' if world > 1 else ''}{nodes_note}); log: {where}", file=out, flush=True)
    return log_paths


def _start_run(tracking: Tracking | None, step: StepPlan, parent_run_id: str | None) -> str | None:
    """The step's MLflow run, a child of the pipeline's (None without MLflow)."""
    if tracking is None:
        return None
    tags = {"mlflow.parentRunId": parent_run_id or "", "maap.step": step.name, "maap.display_name": step.display_name}
    return tracking.start(step.name, {k: v for k, v in tags.items() if v})


def _close(processes: list[subprocess.Popen], progress: ProgressDisplay | None, handles: list) -> None:
    """End every process of the step, the progress line and the log files."""
    terminate(processes)
    if progress is not None:
        progress.close()
    for handle in handles:
        handle.close()


def _prepare(step: StepPlan, step_dir: Path, results: Mapping[str, StepResult]) -> tuple[Path, dict[str, Path], list[str]]:
    """The step's snapshot, its output folders and its argv (the resolved command, also in command.json)."""
    snapshot = snapshot_code(step, step_dir / "snapshot")
    outputs = _step_outputs(step, step_dir)
    command = render_command(step.command, _step_inputs(step, results), {k: str(v) for k, v in outputs.items()}, step.name)
    argv = ["bash", "-c", command]  # as Azure ML runs a command component's command
    (step_dir / "command.json").write_text(json.dumps({"command": command, "argv": argv, "cwd": str(snapshot)}, indent=2) + "\n")
    return snapshot, outputs, argv


def _per_process(step: StepPlan, env: dict[str, str]) -> list[dict[str, str]]:
    """Each process's own variables (one empty dict unless distributed); threads split between them, as torchrun does."""
    if step.distribution != "pytorch":
        return [{}]
    per_process = process_environments(step.process_count, step.instance_count, free_port())
    if len(per_process) > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(per_process)))
    return per_process


def _launch(argv: list[str], snapshot: Path, env: Mapping[str, str], per_process: list[dict[str, str]],
            log_paths: list[Path], processes: list[subprocess.Popen], handles: list) -> None:
    """Start one process per rank, each logging to its file; filled into `processes` and `handles` as they start."""
    for extra, log_path in zip(per_process, log_paths):
        handle = open(log_path, "wb")
        handles.append(handle)
        processes.append(
            subprocess.Popen(  # through the guard: the step ends when this runner dies, by any signal
                [sys.executable, "-S", str(STEP_GUARD), str(os.getpid()), *argv], cwd=snapshot,
                env={**env, **extra}, stdout=handle, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: the runner ends it whole
            )
        )


def _wait(processes, first_log: Path, start: float, name: str, out: TextIO, stream: bool,
          tick: Callable[[], bool] | None = None) -> tuple[int, int] | None:
    """Wait for every process; on the first non-zero exit return (rank, code) and leave the rest to be killed.

    `tick` runs on every turn of the loop (about 5 times a second); while it returns True (live progress
    is on screen) the heartbeat line is left out."""
    last_beat = time.monotonic()
    offset = 0
    while True:
        codes = [process.poll() for process in processes]
        if stream:  # after the poll: a process that has ended has written all it will, the last lines included
            offset = _echo_new(first_log, offset, out)
        for rank, code in enumerate(codes):
            if code not in (None, 0):
                return rank, code
        if all(code == 0 for code in codes):
            return None
        live = tick() if tick is not None else False
        if not live and time.monotonic() - last_beat >= HEARTBEAT_S:
            last_beat = time.monotonic()
            print(f"  {name}: still running, {last_beat - start:.0f} s", file=out, flush=True)
        try:
            processes[[c is None for c in codes].index(True)].wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass


def _echo_new(path: Path, offset: int, out: TextIO) -> int:
    """Write what the log gained since `offset`, partial lines too (--stream shows output as it comes)."""
    data = read_new_bytes(path, offset)
    if data:
        out.write(data.decode("utf-8", errors="replace"))
        out.flush()
    return offset + len(data)

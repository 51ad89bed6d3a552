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

The local defaults (sample data, tiny Phi-3 model, `sqlite:///mlruns.db`, `LOCAL_PROFILE`) are applied
by `local_settings()`; `run_pipeline()` runs any PipelineJob.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from maap_finetune.common.errors import UserError
from maap_finetune.common.progress import PROGRESS_ENV, PROGRESS_FILE, ProgressDisplay, read_new_bytes

# Input overrides for the local run, applied only where the user did not --set the same key, and
# printed at the start of the run. Why each one:
# - learning_rate: the tiny model starts from random weights; 2e-4 (the YAML default, right for a
#   pre-trained model) would barely move it in a few dozen steps, so its loss would not visibly drop.
# - epochs: a few passes over the ~100 sample rows so training shows a trend in seconds.
# - max_seq_length: sample conversations are short; 256 tokens keeps every row whole and the CPU busy
#   for less time than the YAML's 2048.
# - max_new_tokens / evaluate.sample_generations: generating 64 tokens per row from a random
#   tiny model costs time and shows nothing; a few short samples prove the path works.
LOCAL_PROFILE: dict[str, Any] = {
    "learning_rate": 0.005,
    "epochs": 3,
    "max_seq_length": 256,
    "max_new_tokens": 16,
    "evaluate.sample_generations": 4,
}
# On top of LOCAL_PROFILE for one training_method (the tiny model only, --set wins). grpo, measured on the sample
# (data/sample/rft.jsonl): TRL refuses LoRA on lm_head for GRPO, and LoRA elsewhere barely moves the random
# 64-wide model's token log-probabilities (reward flat over 30 steps), so the tiny model is fully fine-tuned;
# 8 completions of 4 tokens per prompt, 2 prompts a step, 30 steps take the reward from about 0.2 to 0.8.
LOCAL_METHOD_PROFILE: dict[str, dict[str, Any]] = {
    "grpo": {
        "peft_method": "none",
        "learning_rate": 0.01,
        "per_device_train_batch_size": 16,
        "finetune.num_generations": 8,
        "finetune.max_completion_length": 4,
        "finetune.max_steps": 30,
        "finetune.logging_steps": 2,
    },
}
# Environment for every step when the base model is the tiny model (a variable set in the user's shell
# wins). OMP_NUM_THREADS=1: the tiny model's matrices (hidden size 64) are too small for threads to pay
# off, and on a busy 2-core machine OpenMP threads spin against other processes: fine-tuning measured
# 2.4 s with one thread against 17.6-36 s with two, under the same load.
TINY_MODEL_ENV: dict[str, str] = {"OMP_NUM_THREADS": "1"}
TINY_MODEL_DIR = Path(".maap") / "tiny-phi3"
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
RUNS_DIR = Path("runs")
LOG_TAIL_LINES = 40
HEARTBEAT_S = 30.0

_BLOCK = re.compile(r"\$\[\[(.*?)\]\]", re.DOTALL)
_REFERENCE = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
_NODE_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK")
_PATH_TYPES = {"uri_file", "uri_folder", "mlflow_model", "custom_model", "triton_model", "mltable"}


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


def _bookkeeping(what: str, action: Callable[[], Any], error: BaseException | None) -> None:
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


@dataclass(frozen=True)
class Binding:
    """Where a node input's value comes from: a value, another node's output, or nothing."""

    kind: str  # "value" | "output" | "unset"
    value: Any = None
    node: str | None = None
    port: str | None = None


@dataclass
class StepPlan:
    name: str
    display_name: str
    command: str
    code_dir: Path
    includes: list[Path]
    input_specs: dict[str, Any]
    output_specs: dict[str, Any]
    bindings: dict[str, Binding]
    depends_on: list[str]
    distribution: str | None = None  # "pytorch" or None
    process_count: int = 1
    instance_count: int = 1
    environment_variables: dict[str, str] = field(default_factory=dict)  # the node's, as Azure ML sets them
    sweep: Any = None  # the SDK's Sweep node when the node is a sweep (run by pipelines/sweep_local.py)


@dataclass
class StepResult:
    name: str
    seconds: float
    outputs: dict[str, Path]
    log_paths: list[Path]
    mlflow_run_id: str | None


@dataclass
class LocalRunResult:
    run_id: str
    run_dir: Path
    tracking_uri: str
    experiment_name: str
    mlflow_run_id: str | None
    steps: dict[str, StepResult] = field(default_factory=dict)
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Planning: PipelineJob -> ordered steps


def _node_input_value(node_input) -> Any:
    """The literal or `Input` a node input holds (the SDK has no public accessor)."""
    return getattr(node_input, "_data", node_input)


def plan_pipeline(job) -> list[StepPlan]:
    """The job's nodes as runnable steps, in dependency order (stable: declaration order on ties)."""
    job_dict = job._to_dict()  # the same bindings Azure ML receives
    pipeline_values = {name: pipeline_input.result() for name, pipeline_input in job.inputs.items()}
    steps: dict[str, StepPlan] = {}
    for node_name, node in job.jobs.items():
        is_sweep = getattr(node, "type", None) == "sweep"
        component = node.trial if is_sweep else node.component  # a sweep runs its trial component
        if getattr(component, "type", "command") != "command" or not getattr(component, "command", None):
            raise UserError(f"node {node_name!r}: the local runner runs command components only")
        base = Path(component.base_path)
        node_inputs = (job_dict["jobs"][node_name].get("inputs")) or {}
        bindings: dict[str, Binding] = {}
        depends_on: list[str] = []
        for name in component.inputs:
            raw = node_inputs.get(name)
            path = raw.get("path") if isinstance(raw, dict) else raw
            parent_match = _PARENT_INPUT.match(path) if isinstance(path, str) else None
            output_match = _NODE_OUTPUT.match(path) if isinstance(path, str) else None
            if raw is None:
                bindings[name] = Binding("unset")
            elif parent_match:
                value = pipeline_values.get(parent_match.group(1))
                bindings[name] = Binding("value", value) if value is not None else Binding("unset")
            elif output_match:
                bindings[name] = Binding("output", node=output_match.group(1), port=output_match.group(2))
                if output_match.group(1) not in depends_on:
                    depends_on.append(output_match.group(1))
            else:
                bindings[name] = Binding("value", _node_input_value(node.inputs[name]))
        distribution = (None if is_sweep else node.distribution) or getattr(component, "distribution", None)
        dist_type = getattr(distribution, "type", None) if distribution is not None else None
        if dist_type is not None and str(dist_type).lower() != "pytorch":
            raise UserError(f"node {node_name!r}: the local runner runs PyTorch distribution only, not {dist_type!r}")
        resources = node.resources or getattr(component, "resources", None)
        steps[node_name] = StepPlan(
            name=node_name,
            display_name=getattr(component, "display_name", None) or node_name,
            command=component.command,
            code_dir=(base / str(component.code or ".")).resolve(),
            includes=[(base / include).resolve() for include in (component.additional_includes or [])],
            input_specs=dict(component.inputs),
            output_specs=dict(component.outputs),
            bindings=bindings,
            depends_on=depends_on,
            distribution="pytorch" if dist_type is not None else None,
            process_count=int(getattr(distribution, "process_count_per_instance", None) or 1) if dist_type else 1,
            instance_count=int(getattr(resources, "instance_count", None) or 1),
            environment_variables={str(k): str(v) for k, v in (getattr(node, "environment_variables", None) or {}).items()},
            sweep=node if is_sweep else None,
        )
    return topological_order(steps)


def topological_order(steps: Mapping[str, StepPlan]) -> list[StepPlan]:
    order: list[StepPlan] = []
    done: set[str] = set()
    pending = list(steps)
    for step in steps.values():
        for dependency in step.depends_on:
            if dependency not in steps:
                raise UserError(f"node {step.name!r} reads an output of {dependency!r}, which is not in the pipeline")
    while pending:
        ready = [name for name in pending if all(d in done for d in steps[name].depends_on)]
        if not ready:
            raise UserError(f"the pipeline has a dependency cycle among {', '.join(pending)}")
        for name in ready:
            order.append(steps[name])
            done.add(name)
            pending.remove(name)
    return order


# --------------------------------------------------------------------------------------------
# One step: snapshot, command, environment


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


def format_value(value: Any) -> str:
    """Render a value as Azure ML puts it on the command line (booleans as True/False)."""
    from azure.ai.ml import Input

    if isinstance(value, Input):
        return str(value.path)
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def render_command(command: str, inputs: Mapping[str, str | None], outputs: Mapping[str, str], step: str = "step") -> str:
    """Resolve `$[[...]]` blocks and `${{...}}` references as text, as Azure ML does; return the command line.

    A block is kept when every input it references has a value, dropped otherwise (Azure ML's rule
    for optional inputs). An input outside any block without a value is an error. Values are pasted in
    verbatim: quoting is the component YAML's job, and the result runs in `bash -c` exactly as Azure ML
    runs it, so a quoting bug breaks here the way it breaks in a workspace.
    """

    def block(match: re.Match) -> str:
        refs = _REFERENCE.findall(match.group(1))
        provided = all(inputs.get(name) is not None for kind, name in refs if kind == "inputs")
        return match.group(1) if provided else " "

    def reference(match: re.Match) -> str:
        kind, name = match.groups()
        table = inputs if kind == "inputs" else outputs
        if name not in table:
            raise UserError(f"step {step!r}: command refers to ${{{{{kind}.{name}}}}}, which the component does not declare")
        value = table[name]
        if value is None:
            raise UserError(f"step {step!r}: input {name!r} has no value and is outside a $[[...]] block")
        return value

    return _REFERENCE.sub(reference, _BLOCK.sub(block, command))


def interpreter_shims(folder: Path) -> Path:
    """A folder with `python`/`python3` pointing at this interpreter, for the front of a step's PATH.

    Azure ML runs `python` from the environment's PATH; locally that environment is this interpreter.
    """
    # exec shims, not symlinks: a symlinked venv interpreter would not find its pyvenv.cfg (nor its packages).
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("python", "python3"):
        shim = folder / name
        if not shim.exists():
            shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} \"$@\"\n")
            shim.chmod(0o755)
    return folder


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_environments(process_count: int, instance_count: int, port: int) -> list[dict[str, str]]:
    """The torch.distributed variables Azure ML sets, one dict per process (all on this machine)."""
    world_size = process_count * instance_count
    return [
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world_size),
            "RANK": str(node_rank * process_count + local_rank),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(process_count),
            "NODE_RANK": str(node_rank),
            "GROUP_RANK": str(node_rank),
        }
        for node_rank in range(instance_count)
        for local_rank in range(process_count)
    ]


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --------------------------------------------------------------------------------------------
# MLflow: a parent run for the pipeline, a child run per step


class _Tracking:
    def __init__(self, tracking_uri: str, experiment_name: str):
        import logging

        from mlflow import MlflowClient

        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial tables..."
        self.uri = tracking_uri
        # Opening a new SQLite store creates and migrates it, and two runs started together would race
        # through alembic's migrations (one dies with "Online migration expected to match one row");
        # creating the experiment races the same way. One lock per store file serialises both.
        with store_lock(tracking_uri):
            self.client = MlflowClient(tracking_uri=tracking_uri)
            experiment = self.client.get_experiment_by_name(experiment_name)
            self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        self.experiment_name = experiment_name

    def start(self, name: str, tags: Mapping[str, str]) -> str:
        owner = {RUNNER_TAG: process_identity(os.getpid()) or str(os.getpid())}
        return self.client.create_run(self.experiment_id, run_name=name, tags={**owner, **tags}).info.run_id

    def mark_orphaned_runs(self) -> list[str]:
        """Mark KILLED the RUNNING runs whose runner (the maap.runner tag) is no longer alive: a runner
        killed by a signal it cannot catch (kill -9) left them RUNNING. Returns their ids."""
        orphaned = []
        for experiment in self.client.search_experiments():
            runs = self.client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'",
                                           max_results=5000)
            for run in runs:
                owner = run.data.tags.get(RUNNER_TAG)
                if owner and not runner_alive(owner):
                    self.client.set_terminated(run.info.run_id, "KILLED")
                    orphaned.append(run.info.run_id)
        return orphaned

    def finish(self, run_id: str, status: str) -> None:
        """End the run with `status` unless the step already ended it (its own `mlflow.start_run()`).

        A step killed mid-run leaves its run RUNNING or, if MLflow's exit hook ran, FAILED; KILLED wins.
        """
        current = self.client.get_run(run_id).info.status
        if current == "RUNNING" or (status == "KILLED" and current != "FINISHED"):
            self.client.set_terminated(run_id, status)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, format_value(v)[:6000]) for k, v in params.items() if v is not None]
        if items:
            self.client.log_batch(run_id, params=items)


_SQLITE = "sqlite:///"


def _sqlite_file(uri: str) -> str | None:
    """The database file of a `sqlite:///<file>` tracking URI (relative or absolute); None for other stores."""
    if not uri.startswith(_SQLITE) or ":memory:" in uri:
        return None
    return uri[len(_SQLITE) :]


def store_lock(tracking_uri: str, timeout_s: float = 300):
    """An inter-process lock beside a `sqlite:///` store (`<file>.lock`); a no-op for other stores."""
    from filelock import FileLock

    database = _sqlite_file(tracking_uri)
    if database is None:
        return contextlib.nullcontext()
    path = Path(database.split("?", 1)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock", timeout=timeout_s)


def absolute_tracking_uri(uri: str, base: Path) -> str:
    """Make a relative `sqlite:///file.db` absolute: steps run in their snapshot folder, not here."""
    database = _sqlite_file(uri)
    if database is not None and not database.startswith("/"):
        return _SQLITE + str((base / database).resolve())
    return uri


# --------------------------------------------------------------------------------------------
# Running


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _step_inputs(step: StepPlan, results: Mapping[str, StepResult]) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name, binding in step.bindings.items():
        if binding.kind == "output":
            values[name] = str(results[binding.node].outputs[binding.port])
            continue
        value = binding.value if binding.kind == "value" else getattr(step.input_specs[name], "default", None)
        spec_type = getattr(step.input_specs[name], "type", None)
        rendered = None if value is None else format_value(value)
        if rendered is not None and spec_type in _PATH_TYPES:
            if re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:", rendered):
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
    snapshot: Path, tracking: _Tracking | None, run_id: str | None, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    for name in _DIST_VARS:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(snapshot)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    if tracking is not None and run_id is not None:
        env["MLFLOW_TRACKING_URI"] = tracking.uri
        env["MLFLOW_RUN_ID"] = run_id
        env["MLFLOW_EXPERIMENT_ID"] = tracking.experiment_id
        env["MLFLOW_EXPERIMENT_NAME"] = tracking.experiment_name
    return env


STEP_GUARD = Path(__file__).resolve().parent / "step_guard.py"
RUNNER_TAG = "maap.runner"  # "<pid>:<start time>" of the runner process that owns a run


def process_identity(pid: int) -> str | None:
    """'<pid>:<start time>' (Linux /proc), or None when no such process runs."""
    from maap_finetune.common.scratch import process_start_time

    start = process_start_time(pid)
    return f"{pid}:{start}" if start is not None else None


def runner_alive(identity: str) -> bool:
    pid, _, _ = identity.partition(":")
    return pid.isdigit() and process_identity(int(pid)) == identity


def _tracking_paths(tracking: _Tracking | None) -> list[str]:
    database = _sqlite_file(tracking.uri) if tracking is not None else None
    return [os.path.dirname(database.split("?", 1)[0])] if database else []


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the step's whole process group: bash, the program it runs and anything that spawned."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(processes: list[subprocess.Popen]) -> None:
    """End every step process and its group: SIGTERM, then SIGKILL after 10 s (as Azure ML's job stop)."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()


class Terminated(KeyboardInterrupt):
    """The runner got SIGTERM (`timeout`, CI, a job scheduler): unwinds like Ctrl-C."""


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Turn SIGTERM into `Terminated` while a pipeline runs, so every step process is ended and every run
    is marked KILLED instead of the runner dying and leaving training processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return

    def raise_terminated(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _final_status(ok: bool, error: BaseException | None) -> str:
    if ok:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def run_step(
    step: StepPlan,
    step_dir: Path,
    results: Mapping[str, StepResult],
    *,
    tracking: _Tracking | None = None,
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
    snapshot = snapshot_code(step, step_dir / "snapshot")
    outputs = _step_outputs(step, step_dir)
    command = render_command(step.command, _step_inputs(step, results), {k: str(v) for k, v in outputs.items()}, step.name)
    argv = ["bash", "-c", command]  # as Azure ML runs a command component's command
    (step_dir / "command.json").write_text(json.dumps({"command": command, "argv": argv, "cwd": str(snapshot)}, indent=2) + "\n")
    logs_dir = step_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)

    mlflow_run_id = None
    if tracking is not None:
        tags = {"mlflow.parentRunId": parent_run_id or "", "maap.step": step.name, "maap.display_name": step.display_name}
        mlflow_run_id = tracking.start(step.name, {k: v for k, v in tags.items() if v})
    env = _base_environment(snapshot, tracking, mlflow_run_id, {**(env or {}), **step.environment_variables})
    env["PATH"] = os.pathsep.join([str(interpreter_shims(step_dir.parent / ".bin")), env.get("PATH", os.defpath)])
    env[PROGRESS_ENV] = str(logs_dir / PROGRESS_FILE)  # live progress, shown by ProgressDisplay
    if step.distribution == "pytorch":
        per_process = process_environments(step.process_count, step.instance_count, free_port())
    else:
        per_process = [{}]
    world = len(per_process)
    if world > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))  # as torchrun does
    log_paths = [logs_dir / ("std_log.txt" if world == 1 else f"std_log_process_{rank}.txt") for rank in range(world)]
    where = log_paths[0] if world == 1 else logs_dir
    nodes_note = f", {step.instance_count} nodes simulated on this machine" if step.instance_count > 1 else ""
    print(f"{label}{step.name}: running ({world} process{'es' if world > 1 else ''}{nodes_note}); log: {where}", file=out, flush=True)

    processes: list[subprocess.Popen] = []
    handles = []
    ok = False
    error: BaseException | None = None
    # With --stream the log itself is shown; an updating line would cut into it.
    progress = None if stream or not live_progress else ProgressDisplay(logs_dir / PROGRESS_FILE, out, label=f"{step.name}: ")

    def tick() -> bool:
        if stop is not None:
            stop()
        return progress.poll() if progress is not None else False

    try:
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
        failed = _wait(processes, log_paths[0], start, step.name, out, stream, tick)
        if failed is not None:
            rank, code = failed
            cause = disk_full_cause(step_dir, *(Path(p) for p in _tracking_paths(tracking)), Path(tempfile.gettempdir()))
            raise StepFailed(step.name, code, log_paths[rank], tail(log_paths[rank]), rank if world > 1 else None,
                             cause=cause)
        ok = True
    except BaseException as err:
        error = err
        raise
    finally:
        _terminate(processes)
        if progress is not None:
            progress.close()
        for handle in handles:
            handle.close()
        if tracking is not None and mlflow_run_id is not None:
            _bookkeeping(f"ending MLflow run {mlflow_run_id} of {step.name}",
                         lambda: tracking.finish(mlflow_run_id, _final_status(ok, error)), error)
    seconds = time.monotonic() - start
    print(f"{label}{step.name}: done in {seconds:.1f} s", file=out, flush=True)
    return StepResult(step.name, seconds, outputs, log_paths, mlflow_run_id)


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
    tracking = _Tracking(absolute_tracking_uri(tracking_uri, workdir), experiment_name) if tracking_uri else None
    if tracking is not None:
        orphaned = tracking.mark_orphaned_runs()
        if orphaned:
            print(f"marked {len(orphaned)} run(s) KILLED: their runner is no longer alive", file=out, flush=True)
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
                run = run_step
                if step.sweep is not None:
                    from pipelines.sweep_local import run_sweep_step as run
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
                _bookkeeping(f"ending the pipeline's MLflow run {result.mlflow_run_id}",
                             lambda: tracking.finish(result.mlflow_run_id, _final_status(ok, error)), error)
    return result


# --------------------------------------------------------------------------------------------
# Local defaults: tiny model, LOCAL_PROFILE


def _tiny_fingerprint(seed: int) -> str:
    from maap_finetune.models import tiny

    digest = hashlib.sha256(Path(tiny.__file__).read_bytes())
    digest.update(tiny.SAMPLE_DATA.read_bytes())
    digest.update(str(seed).encode())
    return digest.hexdigest()


def ensure_tiny_model(cache_dir: Path | str = TINY_MODEL_DIR, seed: int = 0, out: TextIO = sys.stdout) -> Path:
    """Build the tiny Phi-3 model into `cache_dir` once; rebuild when its builder or corpus changed."""
    from maap_finetune.models.tiny import build_tiny_phi3

    cache_dir = Path(cache_dir).resolve()
    stamp = cache_dir / "maap_build.json"
    fingerprint = _tiny_fingerprint(seed)
    if stamp.is_file() and json.loads(stamp.read_text()).get("fingerprint") == fingerprint:
        return cache_dir
    print(f"building the tiny Phi-3 model into {cache_dir} (once)", file=out, flush=True)
    staging = cache_dir.with_name(f"{cache_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    build_tiny_phi3(staging, seed=seed)
    (staging / "maap_build.json").write_text(json.dumps({"fingerprint": fingerprint, "seed": seed}) + "\n")
    shutil.rmtree(cache_dir, ignore_errors=True)
    staging.rename(cache_dir)
    return cache_dir


REGISTERED_MODELS_DIR = Path(".maap") / "registered"


def registered_model_folder(uri: str, tracking_uri: str, cache_dir: Path | str = REGISTERED_MODELS_DIR) -> Path:
    """The folder of a model in the local MLflow registry (`models:/<name>/<version>`), downloaded once:
    what the local run passes as model_path to chain runs (DPO on a registered SFT model).

    The cache is keyed by the store as well as the name and version: two stores each hold their own
    `models:/maap-finetuned/1`. The store is the registry too, as it is for the pipeline's Register step."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    store = absolute_tracking_uri(tracking_uri, Path.cwd())
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", uri[len("models:/"):]).strip("-")
    folder = Path(cache_dir).resolve() / f"{name}-{hashlib.sha256(store.encode()).hexdigest()[:12]}"
    if (folder / "MLmodel").is_file():
        return folder
    staging = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        # Resolved with a client of this store: a models:/ download asks the process-wide registry instead.
        client = MlflowClient(tracking_uri=store, registry_uri=store)
        found = get_model_name_and_version(client, uri)  # (name, version), or (model id,) for models:/m-...
        source = (client.get_logged_model(found[0]).artifact_location if len(found) == 1
                  else client.get_model_version_download_uri(*found))
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging), tracking_uri=store)
    except MlflowException as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"model_path {uri}: not in the MLflow registry at {store} ({err.message})") from None
    if not (Path(local) / "MLmodel").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"model_path {uri}: the registered version is not an MLflow model folder (no MLmodel)")
    shutil.rmtree(folder, ignore_errors=True)
    Path(local).rename(folder)
    shutil.rmtree(staging, ignore_errors=True)
    return folder


def apply_local_profile(
    inputs: Mapping[str, Any], step_inputs: Mapping[str, Mapping[str, Any]], profile: Mapping[str, Any] = LOCAL_PROFILE
) -> tuple[dict[str, Any], dict[str, dict[str, Any]], dict[str, Any]]:
    """Fill in `profile` values the user did not set; return (inputs, step_inputs, what was applied)."""
    merged = dict(inputs)
    merged_steps = {step: dict(values) for step, values in step_inputs.items()}
    applied: dict[str, Any] = {}
    for key, value in profile.items():
        if "." in key:
            step, _, name = key.partition(".")
            if name not in merged_steps.get(step, {}):
                merged_steps.setdefault(step, {})[name] = value
                applied[key] = value
        elif key not in merged:
            merged[key] = value
            applied[key] = value
    return merged, merged_steps, applied

"""MLflow bookkeeping of a local run: a parent run for the pipeline, a child run per step, the run-status rule."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipelines.definition.command import format_value

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
RUNNER_TAG = "maap.runner"  # "<pid>:<start time>" of the runner process that owns a run


def run_status(ok: bool, error: BaseException | None) -> str:
    """The MLflow status a step, trial or pipeline run ends with."""
    if ok:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


class Tracking:
    """One MLflow store and experiment: runs started here carry the runner's identity (RUNNER_TAG)."""

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


def process_identity(pid: int) -> str | None:
    """'<pid>:<start time>' (Linux /proc), or None when no such process runs."""
    from maap_finetune.common.scratch import process_start_time

    start = process_start_time(pid)
    return f"{pid}:{start}" if start is not None else None


def runner_alive(identity: str) -> bool:
    pid, _, _ = identity.partition(":")
    return pid.isdigit() and process_identity(int(pid)) == identity


def tracking_paths(tracking: Tracking | None) -> list[str]:
    database = _sqlite_file(tracking.uri) if tracking is not None else None
    return [os.path.dirname(database.split("?", 1)[0])] if database else []

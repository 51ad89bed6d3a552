"""MLflow tracking for a pipeline step, the way Azure ML sets it up.

Inside an Azure ML job (and under our local runner) `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID`
are set: `mlflow.start_run()` then resumes the step's own run, a child of the pipeline run.
Only the global rank-0 process logs, so N training processes make one run, not N.
Nothing here uses MLflow 3's logged-models API, which Azure ML's tracking server does not serve.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def global_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return global_rank() == 0


@contextlib.contextmanager
def step_run() -> Iterator[Any]:
    """Yield the active MLflow run on rank 0 (None on other ranks)."""
    if not is_main_process():
        yield None
        return
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        yield active
        return
    with mlflow.start_run() as run:
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    if not is_main_process():
        return
    import mlflow

    # MLflow caps a param value at 6000 characters; long values belong in artifacts.
    mlflow.log_params({k: str(v)[:6000] for k, v in params.items() if v is not None})


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    if not is_main_process():
        return
    import mlflow

    numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifacts(local_dir: str | os.PathLike, artifact_path: str | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Log a folder; files named in `exclude` (anywhere in it) are left out."""
    if not is_main_process():
        return
    import mlflow

    local_dir = Path(local_dir)
    if not any(local_dir.rglob(name) for name in exclude):
        mlflow.log_artifacts(str(local_dir), artifact_path=artifact_path)
        return
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file() and p.name not in exclude):
        parent = path.parent.relative_to(local_dir).as_posix()
        where = "/".join(part for part in (artifact_path, parent if parent != "." else None) if part)
        mlflow.log_artifact(str(path), artifact_path=where or None)


def log_artifact(local_file: str | os.PathLike, artifact_path: str | None = None) -> None:
    if not is_main_process():
        return
    import mlflow

    mlflow.log_artifact(str(local_file), artifact_path=artifact_path)


def set_tags(tags: Mapping[str, Any]) -> None:
    if not is_main_process():
        return
    import mlflow

    mlflow.set_tags({k: str(v)[:5000] for k, v in tags.items() if v is not None})

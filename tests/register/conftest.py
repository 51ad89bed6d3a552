"""Register tests reuse Evaluate's fixtures (built once per session) and run Evaluate for real."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluate.conftest import (  # noqa: F401  (fixtures)
    finetuned_mlflow_model,
    mlflow_tracking,
    prepared_chat,
    tracking_template,
    untrained_mlflow_model,
)
from tests.evaluate.fixtures import session_cached
from tests.helpers import argv_from_spec, load_entry


def _evaluate(tmp_path_factory, template, name, prepared, model, base) -> Path:
    """Evaluate's real output for `model` (MLflow logging to a throwaway copy of the store)."""
    import os
    import shutil

    import mlflow

    folder = tmp_path_factory.mktemp(name)
    shutil.copyfile(template, folder / "eval-mlruns.db")
    uri = f"sqlite:///{folder / 'eval-mlruns.db'}"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        argv = argv_from_spec("evaluate", test_data=prepared, mlflow_model=model, model_path=base,
                              evaluation=folder / "evaluation", max_new_tokens=8, sample_generations=2)
        load_entry("evaluate").main(argv)
    finally:
        os.chdir(cwd)
        if saved is not None:
            mlflow.set_tracking_uri(saved)
            os.environ["MLFLOW_TRACKING_URI"] = saved
        else:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
    return folder / "evaluation"


@pytest.fixture(scope="session")
def evaluation_passed(tmp_path_factory, tracking_template, prepared_chat, finetuned_mlflow_model, tiny_model_dir) -> Path:
    return session_cached("evaluation_passed", lambda: _evaluate(
        tmp_path_factory, tracking_template, "eval-passed", prepared_chat, finetuned_mlflow_model, tiny_model_dir))


@pytest.fixture(scope="session")
def evaluation_failed(tmp_path_factory, tracking_template, prepared_chat, untrained_mlflow_model, tiny_model_dir) -> Path:
    return session_cached("evaluation_failed", lambda: _evaluate(
        tmp_path_factory, tracking_template, "eval-failed", prepared_chat, untrained_mlflow_model, tiny_model_dir))

"""Smoke tier: the issue's sweep, end to end on the tiny model, as a user runs it:

    python pipelines/submit.py --local --sweep-set "learning_rate=choice(0.001,0.005)" --sweep-set "lora_r=choice(4,8)"

(with --set export_onnx=false to save the export's time; the sweep does not touch it). Four trials run, the MLflow
tree is pipeline -> sweep -> trials, and the trial with the lowest final_eval_loss is the model evaluated and
registered."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local-sweep")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "submit.py"), "--local", "--set", "export_onnx=false",
         "--sweep-set", "learning_rate=choice(0.001,0.005)", "--sweep-set", "lora_r=choice(4,8)"],
        cwd=workdir, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, f"local sweep failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    values = dict(re.findall(r"^(run_dir|tracking_uri|mlflow_run_id|model_uri): (\S+)$", proc.stdout, re.MULTILINE))
    return values, proc.stdout


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_four_trials_under_a_sweep_under_the_pipeline(sweep_run):
    from mlflow import MlflowClient

    values, stdout = sweep_run
    client = MlflowClient(tracking_uri=values["tracking_uri"])
    pipeline = client.get_run(values["mlflow_run_id"])
    runs = client.search_runs([pipeline.info.experiment_id])
    steps = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == pipeline.info.run_id}
    assert set(steps) == {"data_prep", "finetune", "evaluate", "register"}
    sweep = steps["finetune"]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep.info.run_id]
    assert sorted(r.info.run_name for r in trials) == ["trial_1", "trial_2", "trial_3", "trial_4"]
    assert all(r.info.status == "FINISHED" for r in trials)
    grid = {(r.data.params["learning_rate"], r.data.params["lora_r"]) for r in trials}
    assert grid == {("0.001", "4"), ("0.001", "8"), ("0.005", "4"), ("0.005", "8")}
    best = min(trials, key=lambda r: r.data.metrics["final_eval_loss"])
    assert sweep.data.tags["maap.best_trial"] == best.info.run_name
    assert sweep.data.metrics["final_eval_loss"] == best.data.metrics["final_eval_loss"]


def test_the_best_trials_model_is_evaluated_and_registered(sweep_run):
    from mlflow import MlflowClient

    values, _ = sweep_run
    run_dir = Path(values["run_dir"])
    summary = json.loads((run_dir / "finetune" / "sweep" / "summary.json").read_text())
    best = summary["trials"][0]
    assert best["trial"] == summary["best_trial"] and best["rank"] == 1
    assert [row["final_eval_loss"] for row in summary["trials"]] == sorted(row["final_eval_loss"] for row in summary["trials"])
    best_model = run_dir / "finetune" / "trials" / best["trial"] / "outputs" / "mlflow_model"
    for step in ("evaluate", "register"):
        command = json.loads((run_dir / step / "command.json").read_text())["command"]
        assert f"--mlflow_model '{best_model}'" in command, step
    client = MlflowClient(tracking_uri=values["tracking_uri"])
    name, version = values["model_uri"].removeprefix("models:/").split("/")
    registered = Path(client.get_model_version(name, version).source.removeprefix("file://"))
    weights = "model/model.safetensors"
    assert _sha(registered / weights) == _sha(best_model / weights)
    assert (run_dir / "finetune" / "sweep" / "summary.png").is_file()

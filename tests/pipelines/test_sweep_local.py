"""The local runner runs a sweep node as Azure ML does (pipelines/local/sweep.py), on a fake trial component:
trials as child MLflow runs of a sweep run, a Bandit policy stopping a trial from its logged metric history,
the best trial's outputs passed downstream, and the summary."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from pipelines.local.runner import run_pipeline

TRIAL = """\
import argparse, os, time
from pathlib import Path
from mlflow import MlflowClient

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
client = MlflowClient()
# A good learning rate brings the loss down; a bad one stays high (a trial Bandit should stop).
losses = [1.0, 0.8, 0.6, 0.5] if args.lr < 0.01 else [3.0, 3.0, 3.0, 3.0]
for step, loss in enumerate(losses, 1):
    client.log_metric(os.environ["MLFLOW_RUN_ID"], "eval_loss", loss, step=step)
    time.sleep(0.1 if args.lr < 0.01 else 5.0)  # the bad trial is slow: the policy must stop it, not its end
Path(args.out, "model.txt").write_text(str(args.lr))
"""
CONSUME = "import sys, shutil; shutil.copy(sys.argv[1] + '/model.txt', sys.argv[2] + '/seen.txt')\n"


def component(folder: Path, name: str, script: str, inputs: str, outputs: str, command: str):
    from azure.ai.ml import load_component

    folder.mkdir(parents=True)
    (folder / f"{name}.py").write_text(script)
    (folder / "spec.yaml").write_text(
        f"$schema: https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json\n"
        f"type: command\nname: {name}\nversion: 0.0.1\ncode: .\nenvironment: azureml:fake-env:1\n"
        f"inputs:\n{inputs}outputs:\n{outputs}command: >-\n  {command}\n"
    )
    return load_component(source=folder / "spec.yaml")


@pytest.fixture(scope="module")
def swept_run(tmp_path_factory):
    from azure.ai.ml import dsl
    from azure.ai.ml.sweep import BanditPolicy, Choice
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("sweep-local")
    trial = component(root / "trial", "trial", TRIAL, "  lr: {type: number, default: 0.1}\n",
                      "  out: {type: uri_folder}\n", "python trial.py --lr ${{inputs.lr}} --out '${{outputs.out}}'")
    consume = component(root / "consume", "consume", CONSUME, "  model: {type: uri_folder}\n",
                        "  seen: {type: uri_folder}\n", "python consume.py '${{inputs.model}}' '${{outputs.seen}}'")

    @dsl.pipeline(name="swept", experiment_name="sweep-exp")
    def pipeline():
        train = trial(lr=Choice([0.001, 0.5, 0.002]))
        train = train.sweep(primary_metric="eval_loss", goal="minimize", sampling_algorithm="grid", max_total_trials=3,
                            max_concurrent_trials=1,
                            early_termination_policy=BanditPolicy(slack_factor=0.1, evaluation_interval=1, delay_evaluation=1))
        use = consume(model=train.outputs.out)  # noqa: F841 (the DSL names the node after it)

    workdir = root / "work"
    workdir.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}").search_experiments()
    out = io.StringIO()
    result = run_pipeline(pipeline(), workdir=workdir, out=out)
    return result, MlflowClient(tracking_uri=result.tracking_uri), out.getvalue()


@pytest.mark.slow  # swept_run runs a real local sweep (16 s)
def test_mlflow_tree_is_pipeline_then_sweep_then_trials(swept_run):
    result, client, _ = swept_run
    experiment = client.get_experiment_by_name("sweep-exp").experiment_id
    runs = client.search_runs([experiment])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == result.mlflow_run_id}
    assert set(children) == {"train", "use"}
    sweep_run = children["train"]
    assert sweep_run.data.tags["maap.sweep"] == "true" and sweep_run.info.run_id == result.steps["train"].mlflow_run_id
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == sweep_run.info.run_id}
    assert set(trials) == {"trial_1", "trial_2", "trial_3"}
    assert trials["trial_1"].info.status == trials["trial_3"].info.status == "FINISHED"
    # The best trial's best eval_loss, on the sweep run, as Azure ML ranks trials.
    assert sweep_run.data.metrics["eval_loss"] == 0.5
    assert sweep_run.data.tags["maap.best_trial"] == "trial_1"
    assert sweep_run.data.params["best.lr"] == "0.001"


@pytest.mark.slow  # swept_run runs a real local sweep (16 s)
def test_bandit_stops_the_trial_outside_the_slack_and_marks_it_killed(swept_run):
    result, client, stdout = swept_run
    stopped = client.search_runs([client.get_experiment_by_name("sweep-exp").experiment_id],
                                 "attributes.run_name = 'trial_2'")[0]
    assert stopped.info.status == "KILLED"
    assert "bandit at interval 1: best 3.0000" in stopped.data.tags["maap.stop_reason"]
    history = client.get_metric_history(stopped.info.run_id, "eval_loss")
    assert len(history) < 4  # ended before it logged every interval
    assert "trial_2: stopped early" in stdout
    assert not (result.run_dir / "train" / "trials" / "trial_2" / "outputs" / "out" / "model.txt").exists()


@pytest.mark.slow  # swept_run runs a real local sweep (16 s)
def test_downstream_reads_the_best_trials_outputs(swept_run):
    result, _, _ = swept_run
    best = result.run_dir / "train" / "trials" / "trial_1" / "outputs" / "out"
    assert result.steps["train"].outputs["out"] == best.resolve()
    assert (result.steps["use"].outputs["seen"] / "seen.txt").read_text() == "0.001"


@pytest.mark.slow  # swept_run runs a real local sweep (16 s)
def test_summary_ranks_trials_best_first_in_the_run_folder_and_mlflow(swept_run):
    result, client, _ = swept_run
    folder = result.run_dir / "train" / "sweep"
    summary = json.loads((folder / "summary.json").read_text())
    assert [(row["trial"], row["status"], row["lr"], row["eval_loss"]) for row in summary["trials"]] == [
        ("trial_1", "completed", 0.001, 0.5), ("trial_3", "completed", 0.002, 0.5), ("trial_2", "stopped", 0.5, 3.0),
    ]
    assert "| 1 | trial_1 | completed | 0.001 | 0.5 |" in (folder / "summary.md").read_text()
    assert (folder / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    artifacts = {f.path for f in client.list_artifacts(result.steps["train"].mlflow_run_id, "sweep")}
    assert artifacts == {"sweep/summary.json", "sweep/summary.md", "sweep/summary.png"}

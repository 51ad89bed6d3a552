"""The local runner enforces a sweep's time limits (pipelines/local/sweep.py), on a fake trial component:
trial_timeout stops a trial that runs too long, the sweep timeout stops the running trial and starts no other,
each marked in MLflow and the summary with the limit that ended it."""

from __future__ import annotations

import io
import json

import pytest

from pipelines.local.runner import run_pipeline
from pipelines.local.step import StepFailed
from tests.pipelines.test_sweep_local import component

# A small learning rate finishes and logs its loss; a large one logs a better loss first, then hangs (a limit must end it).
TRIAL = """\
import argparse, os, time
from pathlib import Path
from mlflow import MlflowClient

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, required=True)
parser.add_argument("--out", required=True)
args = parser.parse_args()
MlflowClient().log_metric(os.environ["MLFLOW_RUN_ID"], "final_eval_loss", 0.5 if args.lr < 0.01 else 0.1, step=1)
if args.lr >= 0.01:
    time.sleep(60)  # far past the limits below; without them the trial would finish and be best
Path(args.out, "model.txt").write_text(str(args.lr))
"""


def run_sweep(root, monkeypatch, lrs, concurrent, **limits):
    """Run a one-node pipeline sweeping `lrs` (grid, in order) under `limits` (seconds); return (result or error,
    trial runs by name, stdout, workdir)."""
    from azure.ai.ml import dsl
    from azure.ai.ml.entities._job import job_limits
    from azure.ai.ml.sweep import Choice
    from mlflow import MlflowClient

    # The SDK raises a timeout under 60 s to 60 (its floor for the service); these trials run seconds, not minutes.
    monkeypatch.setattr(job_limits, "_get_floored_timeout", lambda value: value)
    trial = component(root / "trial", "trial", TRIAL, "  lr: {type: number, default: 0.1}\n",
                      "  out: {type: uri_folder}\n", "python trial.py --lr ${{inputs.lr}} --out '${{outputs.out}}'")

    @dsl.pipeline(name="limited", experiment_name="limits-exp")
    def pipeline():
        train = trial(lr=Choice(lrs))
        train = train.sweep(primary_metric="final_eval_loss", goal="minimize", sampling_algorithm="grid",
                    max_total_trials=len(lrs), max_concurrent_trials=concurrent, **limits)  # noqa: F841 (names the node)

    workdir = root / "work"
    workdir.mkdir()
    out = io.StringIO()
    try:
        outcome = run_pipeline(pipeline(), workdir=workdir, out=out)
    except StepFailed as err:
        outcome = err
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlruns.db'}")
    runs = client.search_runs([client.get_experiment_by_name("limits-exp").experiment_id])
    trials = {r.info.run_name: r for r in runs if "maap.sweep_trial" in r.data.tags}
    return outcome, trials, out.getvalue(), workdir


def summary_rows(workdir):
    (summary,) = workdir.glob("runs/*/train/sweep/summary.json")
    return json.loads(summary.read_text())


@pytest.mark.slow
def test_trial_timeout_stops_the_trial_marks_it_killed_and_the_finished_trial_is_best(tmp_path, monkeypatch):
    result, trials, stdout, workdir = run_sweep(tmp_path, monkeypatch, [0.001, 0.5], 2, trial_timeout=12)
    assert not isinstance(result, Exception), result
    stopped = trials["trial_2"]
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["maap.stop_reason"] == "trial_timeout 12 s reached"
    assert "trial_2: stopped early: trial_timeout 12 s reached" in stdout
    assert trials["trial_1"].info.status == "FINISHED"
    # The stopped trial logged a better loss (0.1) but its outputs are unfinished: as an early-terminated trial, not best.
    summary = summary_rows(workdir)
    assert summary["best_trial"] == "trial_1"
    assert [(r["trial"], r["status"], r["final_eval_loss"], r["note"]) for r in summary["trials"]] == [
        ("trial_1", "completed", 0.5, ""), ("trial_2", "stopped", 0.1, "trial_timeout 12 s reached")]
    best_out = result.run_dir / "train" / "trials" / "trial_1" / "outputs" / "out"
    assert result.steps["train"].outputs["out"] == best_out.resolve()
    assert 12 <= next(r for r in summary["trials"] if r["trial"] == "trial_2")["seconds"] < 30


@pytest.mark.slow
def test_sweep_timeout_stops_the_running_trial_starts_no_other_and_fails_naming_the_limit(tmp_path, monkeypatch):
    error, trials, stdout, workdir = run_sweep(tmp_path, monkeypatch, [0.5, 0.001, 0.002], 1, timeout=3)
    assert isinstance(error, StepFailed)
    assert ("no trial completed with final_eval_loss; sweep timeout 3 s reached (ended trial_1, trial_2, trial_3): "
            "raise limits.timeout in the sweep file or with --sweep-limit timeout=N") in str(error)
    assert set(trials) == {"trial_1"}  # no run for a trial that never started
    assert trials["trial_1"].info.status == "KILLED"
    assert trials["trial_1"].data.tags["maap.stop_reason"] == "sweep timeout 3 s reached"
    assert "trial_2: not started: sweep timeout 3 s reached" in stdout
    summary = summary_rows(workdir)
    assert summary["best_trial"] is None
    assert [(r["trial"], r["status"], r["note"]) for r in summary["trials"]] == [
        ("trial_1", "stopped", "sweep timeout 3 s reached"),
        ("trial_2", "skipped", "not started: sweep timeout 3 s reached"),
        ("trial_3", "skipped", "not started: sweep timeout 3 s reached"),
    ]
    (markdown,) = workdir.glob("runs/*/train/sweep/summary.md")
    assert markdown.read_text().startswith("# Sweep: final_eval_loss (minimize), no trial completed")

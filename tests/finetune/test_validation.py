"""Validation during training on the tiny Phi-3: eval_steps, early stopping and the best checkpoint.

With learning_rate 1.0 (far too high) the tiny model's validation loss stalls near the unigram level
(about 6.46) after ~20 steps and then wobbles, while learning_rate 0.005 keeps lowering it for 40 steps
and more (about 5.99 at step 40): the too-high rate is what early stopping has to catch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.training.checkpoints import MARKER, rotate_checkpoints
from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry

TOO_HIGH_LR = 1.0
OVERSHOOTING_LR = 0.3


def _step_run(monkeypatch):
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(client.create_experiment("validation-test")).info.run_id
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    return client, run_id


def _train(tmp_path, prepared, model, **inputs) -> dict:
    finetune = load_entry("finetune")
    return finetune.main(argv_from_spec("finetune", train_data=prepared, model_path=model, **inputs, **outputs(tmp_path)))


def _evaluations(checkpoints: Path, name: str) -> list[tuple[int, float]]:
    state = json.loads((checkpoints / name / "trainer_state.json").read_text())
    return [(e["step"], e["eval_loss"]) for e in state["log_history"] if "eval_loss" in e]


def _adapter_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_early_stopping_stops_a_run_with_a_too_high_learning_rate(
    tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking, monkeypatch
):
    client, run_id = _step_run(monkeypatch)
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("MAAP_PROGRESS_FILE", str(progress))  # as the local runner sets it
    summary = _train(
        tmp_path, prepared_chat, tiny_model_dir, learning_rate=TOO_HIGH_LR, max_steps=40, eval_steps=2,
        save_steps=2, early_stopping_patience=2, load_best_model_at_end=True, logging_steps=1,
    )
    assert summary["stopped_early"] is True
    stopped = summary["stopped_at_step"]
    assert stopped == summary["steps"] < 40

    # Validation loss every 2 steps went to the step's MLflow run; the best is its minimum, and none of
    # the last `patience` evaluations beat it.
    history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, "eval_loss"))
    assert [step for step, _ in history] == list(range(2, stopped + 1, 2))
    best_step, best_loss = min(history, key=lambda e: e[1])
    assert (summary["best_step"], summary["best_checkpoint"]) == (best_step, f"checkpoint-{best_step}")
    assert summary["best_eval_loss"] == pytest.approx(best_loss)
    assert best_step == stopped - 4 and all(loss >= best_loss for _, loss in history[-2:])
    reason = summary["stop_reason"]
    assert f"best ({best_loss:.4f} at step {best_step})" in reason and "in 2 evaluations in a row" in reason
    assert reason.endswith(f"stopped at step {stopped} of 40")

    # The summary and MLflow say so.
    run = client.get_run(run_id)
    assert run.data.tags["maap.stopped_early"] == "true" and run.data.tags["maap.stop_reason"] == reason
    assert run.data.tags["maap.model_checkpoint"] == f"checkpoint-{best_step}"
    assert run.data.metrics["stopped_early"] == 1 and run.data.metrics["stopped_at_step"] == stopped
    assert run.data.metrics["best_eval_loss"] == pytest.approx(best_loss)
    adapter = tmp_path / "adapter"
    assert json.loads((adapter / "training_summary.json").read_text())["stop_reason"] == reason
    assert (adapter / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    # Live progress for the local runner: the same numbers, from the training callbacks.
    records = [json.loads(line) for line in progress.read_text().splitlines()]
    last = records[-1]
    assert (last["step"], last["max_steps"], last["start_step"]) == (stopped, 40, 0)
    assert last["eval_loss"] == pytest.approx(history[-1][1]) and last["loss"] > 0 and last["tokens_per_second"] > 0
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)


def test_best_checkpoint_is_kept_when_the_last_is_worse(tmp_path, tiny_model_dir, prepared_chat, mlflow_tracking):
    # save_steps 6 is a multiple of eval_steps 2 but most evaluations fall between saves: the best must get
    # its own checkpoint, and survive save_total_limit 1.
    # A constant rate of 0.3 overshoots after a few steps: with the packages of 2026-12-02 the validation loss is
    # best at step 14 (6.4668) and worse at 24 (6.4708), while at 1.0 it kept falling to step 24 (a decaying rate
    # lets it settle at its best last, too).
    summary = _train(
        tmp_path, prepared_chat, tiny_model_dir, learning_rate=OVERSHOOTING_LR, max_steps=24, eval_steps=2,
        save_steps=6, save_total_limit=1, load_best_model_at_end=True, lr_scheduler_type="constant", warmup_ratio=0.0,
    )
    checkpoints = tmp_path / "checkpoints"
    evaluations = _evaluations(checkpoints, "checkpoint-24")
    best_step, best_loss = min(evaluations, key=lambda e: e[1])
    last_step, last_loss = evaluations[-1]
    assert last_step == summary["steps"] == 24
    assert best_step < last_step and last_loss > best_loss, f"the run's premise, a worse last checkpoint: {evaluations}"
    assert not summary["stopped_early"] and summary["stop_reason"] is None
    best = f"checkpoint-{best_step}"
    assert summary["best_checkpoint"] == summary["model_checkpoint"] == best
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*")) == sorted({best, "checkpoint-24"})

    # The adapter is the best checkpoint's, not the last one's, and the merged model scores the best loss.
    saved = _adapter_weights(tmp_path / "adapter")
    assert _same_weights(saved, _adapter_weights(checkpoints / best))
    assert not _same_weights(saved, _adapter_weights(checkpoints / "checkpoint-24"))
    assert summary["eval_loss"] == pytest.approx(best_loss, abs=1e-5)
    assert summary["merge_parity"]["passed"]


def test_rotation_keeps_the_newest_complete_and_the_best(tmp_path):
    for step in (2, 4, 6, 8, 10):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text("{}")
        if step != 10:  # checkpoint-10 is still being written
            (folder / MARKER).write_text("ok\n")
    removed = rotate_checkpoints(tmp_path, keep=2, protect="checkpoint-2")
    assert [p.name for p in removed] == ["checkpoint-4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-2", "checkpoint-6", "checkpoint-8"]
    assert [p.name for p in rotate_checkpoints(tmp_path, keep=1)] == ["checkpoint-2", "checkpoint-6"]


def test_resumed_run_finds_the_best_checkpoint_in_its_own_output_folder(tmp_path):
    """A retried job may see its checkpoints mounted at another path: the Trainer drops a recorded best
    path that does not exist, and the marker callback points it at the same checkpoint in this run."""
    from types import SimpleNamespace

    from maap_finetune.training.checkpoints import CompleteMarkerCallback, write_marker

    folder = tmp_path / "checkpoint-6"
    folder.mkdir()
    (folder / "trainer_state.json").write_text("{}")
    write_marker(folder)
    args = SimpleNamespace(output_dir=str(tmp_path))
    state = SimpleNamespace(best_global_step=6, best_model_checkpoint=None)  # as the Trainer left it
    CompleteMarkerCallback(2, keep_best=True).on_train_begin(args, state, None)
    assert state.best_model_checkpoint == str(folder)
    state = SimpleNamespace(best_global_step=8, best_model_checkpoint=None)  # no complete checkpoint-8 here
    CompleteMarkerCallback(2, keep_best=True).on_train_begin(args, state, None)
    assert state.best_model_checkpoint is None  # left for best_outcome to refuse loudly


def test_eval_steps_without_a_validation_split_is_a_user_error(tmp_path, tiny_model_dir):
    from maap_finetune.common.errors import UserError
    from tests.finetune.conftest import write_prepared

    prepared = write_prepared(tmp_path / "prepared", held_out=0)  # no validation (nor test) rows
    with pytest.raises(UserError, match="the validation split is empty, so eval_steps has nothing to evaluate"):
        _train(tmp_path, prepared, tiny_model_dir, eval_steps=5)
    assert not (tmp_path / "adapter").exists()

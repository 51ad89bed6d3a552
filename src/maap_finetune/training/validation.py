"""Validation during training: the callbacks behind eval_steps, early stopping and the best checkpoint,
and the account of what they decided (for training_summary.json and MLflow).

The Trainer computes `eval_loss` every `eval_steps` and at the last step, records the lowest in
`state.best_metric` / `state.best_global_step`, and with `load_best_model_at_end` reloads that
checkpoint after training. Two additions make this dependable:
- `SaveBestCallback` writes a checkpoint at every evaluation that improves the loss, so the best is
  always on disk (otherwise only evaluations that fall on a save step could be loaded);
- `best_outcome` checks that the weights in memory are the best checkpoint's, and fails rather than
  ship the last step's weights under the best one's name.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transformers import EarlyStoppingCallback, TrainerCallback

from maap_finetune.training.checkpoints import checkpoint_name
from maap_finetune.training.config import FinetuneConfig

log = logging.getLogger(__name__)

METRIC = "eval_loss"


class SaveBestCallback(TrainerCallback):
    """Ask for a checkpoint at every evaluation whose loss beats the best so far.

    Runs before the Trainer updates `state.best_metric` (on_evaluate comes first), with the same rule:
    strictly lower is better."""

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        value = (metrics or {}).get(METRIC)
        if value is not None and (state.best_metric is None or value < state.best_metric):
            control.should_save = True
        return control


def build_callbacks(config: FinetuneConfig) -> list[TrainerCallback]:
    callbacks: list[TrainerCallback] = []
    if config.load_best_model_at_end:
        callbacks.append(SaveBestCallback())
    if config.early_stopping_patience is not None:
        callbacks.append(
            EarlyStoppingCallback(
                early_stopping_patience=config.early_stopping_patience,
                early_stopping_threshold=config.early_stopping_threshold,
            )
        )
    return callbacks


def _evaluations(log_history: list[dict[str, Any]]) -> list[tuple[int, float]]:
    return [(int(e["step"]), float(e[METRIC])) for e in log_history if METRIC in e and "step" in e]


def stop_reason(config: FinetuneConfig, state, evaluations: list[tuple[int, float]]) -> str:
    patience = config.early_stopping_patience
    recent = ", ".join(f"{loss:.4f} at step {step}" for step, loss in evaluations[-patience:])
    return (
        f"early stopping: the validation loss did not improve on its best ({state.best_metric:.4f} at step "
        f"{state.best_global_step}) by more than early_stopping_threshold {config.early_stopping_threshold} "
        f"in {patience} evaluation{'s' if patience > 1 else ''} in a row ({recent}); stopped at step "
        f"{state.global_step} of {state.max_steps}"
    )


def best_outcome(config: FinetuneConfig, state, callbacks: list[TrainerCallback]) -> dict[str, Any]:
    """What validation decided, after `trainer.train()`: the best evaluation, whether and why training
    stopped early, and which checkpoint the final weights are. Raises when load_best_model_at_end could
    not load the best checkpoint.

    `callbacks` must be the trainer's own list (`trainer.callback_handler.callbacks`): on resume the
    Trainer replaces the early-stopping callback with one restored from the checkpoint."""
    evaluations = _evaluations(state.log_history)
    best = checkpoint_name(state.best_global_step) if config.eval_steps is not None else None
    loaded = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
    if config.load_best_model_at_end and best is not None and loaded != best:
        raise RuntimeError(
            f"load_best_model_at_end: the best checkpoint {best} ({METRIC} {state.best_metric}) is not in "
            f"{config.checkpoints} (found {loaded}); refusing to save the last step's weights as the best"
        )
    stopper = next((c for c in callbacks if isinstance(c, EarlyStoppingCallback)), None)
    stopped = bool(
        stopper is not None
        and stopper.early_stopping_patience_counter >= stopper.early_stopping_patience
        and state.global_step < state.max_steps
    )
    finite = state.best_metric is not None and math.isfinite(state.best_metric)
    best_metric = state.best_metric if best is not None and finite else None
    return {
        "eval_steps": config.eval_steps,
        "evaluations": len(evaluations),
        "best_eval_loss": best_metric,
        "best_step": state.best_global_step if best is not None else None,
        "best_checkpoint": best,
        "model_checkpoint": best if config.load_best_model_at_end and best else "last step",
        "stopped_early": stopped,
        "stopped_at_step": state.global_step if stopped else None,
        "stop_reason": stop_reason(config, state, evaluations) if stopped else None,
    }

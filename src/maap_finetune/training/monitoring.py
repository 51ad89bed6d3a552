"""What training measures and reports: non-padding tokens, padding ratio, MLflow metrics, the
training summary and the loss curve."""

from __future__ import annotations

import json
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from maap_finetune.common import tracking


@dataclass
class TokenCounter:
    tokens: int = 0  # real (non-padding) tokens fed to the model
    slots: int = 0  # tokens including padding

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.tokens / self.slots if self.slots else 0.0


class CountingCollator:
    """Wrap the trainer's collator to count real tokens and padded slots in every batch."""

    def __init__(self, inner, counter: TokenCounter):
        self.inner = inner
        self.counter = counter

    def __call__(self, examples):
        batch = self.inner(examples)
        if "seq_lengths" in examples[0]:  # packed rows: count the examples inside
            real = sum(sum(e["seq_lengths"]) for e in examples)
        else:
            real = sum(len(e["input_ids"]) for e in examples)
        self.counter.tokens += real
        self.counter.slots += int(batch["input_ids"].numel())
        return batch


class MlflowMetricsCallback(TrainerCallback):
    """Log the trainer's loss and learning rate, and tokens/s, to the step's MLflow run (rank 0 only).

    Used instead of transformers' MLflowCallback, which would start its own run rather than resume
    the step run Azure ML (or the local runner) created, and would log hundreds of arguments."""

    def __init__(self, counter: TokenCounter, world_size: int):
        self.counter = counter
        self.world_size = world_size
        self._start = None
        self._start_tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()
        self._start_tokens = self.counter.tokens

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        metrics = {}
        for key, name in (("loss", "train_loss"), ("learning_rate", "learning_rate"), ("grad_norm", "grad_norm"),
                          ("eval_loss", "eval_loss")):
            if key in logs:
                metrics[name] = logs[key]
        if self._start is not None and "loss" in logs:  # training logs only (eval batches are counted too)
            elapsed = time.perf_counter() - self._start
            if elapsed > 0:
                # Each rank counts its own batches; ranks see equally many batches.
                metrics["tokens_per_second"] = (self.counter.tokens - self._start_tokens) * self.world_size / elapsed
        tracking.log_metrics(metrics, step=state.global_step)


def peak_memory_bytes() -> dict[str, int]:
    import torch

    peaks = {}
    if torch.cuda.is_available():
        peaks["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks["peak_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    return peaks


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        ax.plot(*zip(*evals), label="validation loss", marker="o", linestyle="none")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title("Fine-tune loss")
    ax.grid(True, alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path

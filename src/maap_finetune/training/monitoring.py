"""What training measures and reports: non-padding tokens, padding ratio, MLflow metrics, the
training summary and the loss curve."""

from __future__ import annotations

import ctypes
import gc
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


class ProgressCallback(TrainerCallback):
    """Write live progress (step/total, loss, tokens/s, time) for the local runner to show (rank 0 only).

    At most one record every `every_s` seconds, plus the last step and every evaluation."""

    def __init__(self, writer, counter: TokenCounter, world_size: int, every_s: float = 0.5):
        self.writer = writer
        self.counter = counter
        self.world_size = world_size
        self.every_s = every_s
        self._start = self._start_tokens = self._start_step = None
        self._last = -float("inf")
        self._loss = self._eval_loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._start, self._start_tokens, self._start_step = time.perf_counter(), self.counter.tokens, state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self._loss = logs.get("loss", self._loss)
        if "eval_loss" in logs:
            self._eval_loss = logs["eval_loss"]
            self._write(state, force=True)

    def on_step_end(self, args, state, control, **kwargs):
        # The last step is always written, by on_log when an evaluation follows (it brings eval_loss).
        self._write(state, force=state.global_step >= state.max_steps and not control.should_evaluate)

    def _write(self, state, force: bool) -> None:
        now = time.perf_counter()
        if not state.is_world_process_zero or self._start is None or (not force and now - self._last < self.every_s):
            return
        self._last = now
        elapsed = now - self._start
        tokens = (self.counter.tokens - self._start_tokens) * self.world_size
        self.writer.write({
            "step": state.global_step, "max_steps": state.max_steps, "start_step": self._start_step,
            "elapsed_s": round(elapsed, 3), "loss": self._loss, "eval_loss": self._eval_loss,
            "tokens_per_second": round(tokens / elapsed, 1) if elapsed > 0 else None,
        })


def peak_memory_bytes() -> dict[str, int]:
    import torch

    peaks = {}
    if torch.cuda.is_available():
        peaks["peak_gpu_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peaks["peak_rss_bytes"] = int(rss if sys.platform == "darwin" else rss * 1024)
    return peaks


def release_freed_memory() -> None:
    """Collect garbage and hand the freed heap back to the OS.

    glibc keeps freed heap pages for reuse (any allocation below its mmap threshold, which rises to 32 MB
    as tensors are freed), so the training model's fp32 weights, freed after training, still counted in
    RSS while the merge loaded its own fp32 copy: the merge phase's peak at 220M parameters was 3.36 GB with them,
    2.09 GB without (benchmarks/results/finetune-memory-cpu2-2026-12-02.md). `malloc_trim(0)` returns them; on
    another libc there is nothing to call and nothing is done."""
    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl): its free already unmaps
        return
    trim(0)


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def plot_loss_curve(log_history: list[dict[str, Any]], path: Path, validation: dict[str, Any] | None = None) -> Path:
    """Training and validation loss per step; the best checkpoint and an early stop are marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    validation = validation or {}
    train = [(e["step"], e["loss"]) for e in log_history if "loss" in e and "step" in e]
    evals = [(e["step"], e["eval_loss"]) for e in log_history if "eval_loss" in e and "step" in e]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss", marker=".")
    if evals:
        style = {"linestyle": "none"} if len(evals) == 1 else {}
        ax.plot(*zip(*evals), label="validation loss", marker="o", **style)
    if validation.get("best_step") and validation.get("best_eval_loss") is not None:
        ax.plot([validation["best_step"]], [validation["best_eval_loss"]], marker="*", markersize=14,
                linestyle="none", label=f"best ({validation['best_checkpoint']})")
    if validation.get("stopped_early"):
        ax.axvline(validation["stopped_at_step"], color="grey", linestyle="--",
                   label=f"early stop (step {validation['stopped_at_step']})")
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

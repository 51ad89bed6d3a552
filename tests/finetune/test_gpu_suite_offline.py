"""The GPU suite without a GPU: it starts and skips cleanly through its real entry points, and its rehearsal
runs every step of the throughput part on the CPU, so that a mistake in it shows here and not in a short
device run."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from tests.helpers import COMPONENTS_DIR

REPO = COMPONENTS_DIR.parent


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="this machine has CUDA: the suite would run, not skip")
@pytest.mark.parametrize("command", [
    [sys.executable, "benchmarks/gpu_suite.py"],
    ["bash", "benchmarks/gpu_suite.sh", "throughput", "zero3"],
    ["bash", "benchmarks/gpu_suite.sh", "quant"],
])
@pytest.mark.slow
def test_gpu_suite_skips_without_cuda(command):
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={"PATH": f"{REPO / '.venv' / 'bin'}:{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "skipped: no CUDA"


def test_mfu_flop_count():
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_suite import flops_per_token

    # 4 x params per token for LoRA, plus causal attention 6 x layers x seq x hidden.
    assert flops_per_token(params=10, layers=2, hidden=3, seq=5) == 4 * 10 + 6 * 2 * 5 * 3


def test_children_keep_the_carried_packages(monkeypatch):
    """On the device the carried wheels are on PYTHONPATH; a child that lost them would skip or fail."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_suite import child_environment

    monkeypatch.setenv("PYTHONPATH", "/tmp/site")
    assert child_environment()["PYTHONPATH"].split(":") == [str(REPO / "src"), str(REPO), "/tmp/site"]


@pytest.mark.slow
def test_rehearsal_runs_the_suite_on_the_cpu(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--rehearse", "--part", "throughput", "zero3",
                           "quant", "--results", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from gpu_suite import REHEARSAL

    (report_path,) = tmp_path.glob("rehearsal-*.json")
    report = json.loads(report_path.read_text())
    contenders = report["throughput"]["contenders"]
    assert set(contenders) == {"trl_best", "component"}, contenders
    for name, result in contenders.items():
        assert "error" not in result, (name, result.get("error"))
        # Every timed step carried the full micro-batch, unpadded, and learned from the same tokens.
        assert result["tokens_per_step"] == [REHEARSAL.micro_batch * REHEARSAL.seq] * REHEARSAL.timed_steps
        assert result["tokens_per_second"] > 0 and result["peak_memory_gib"] > 0
        assert result["largest_micro_batch"] == max(REHEARSAL.probe_batches)
        assert math.isfinite(result["train_loss"])
    # Same model, data, objective and learning rate: the contenders differ in speed, not in what they compute.
    assert contenders["component"]["loss_tokens_per_step"] == contenders["trl_best"]["loss_tokens_per_step"]
    assert contenders["component"]["train_loss"] == pytest.approx(contenders["trl_best"]["train_loss"], rel=1e-4)
    assert contenders["component"]["speed_vs_trl_best"] > 0
    # The GPU tests' selections exist (pytest exits 5 when -k selects nothing); here they skip without CUDA,
    # and their outcomes reach the report (on the GPU, with the losses and merge parity they record).
    tests = report["tests"]
    assert {name.split("[")[0] for name in tests} == {"test_quantized_methods_train_and_merge_in_bf16",
                                                      "test_lora_under_zero3_saves_a_non_empty_adapter"}
    assert len(tests) == 3 and all(t["outcome"] == "skipped" and t["message"] for t in tests.values()), tests


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_parts_past_the_deadline_are_recorded_as_not_run_and_the_report_reaches_out(tmp_path):
    """A device command is killed at its limit: what the suite could not start is in the report, and the
    report is in $OUT (what the device tool brings back)."""
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/gpu_suite.py", "--rehearse", "--deadline_s", "1", "--part",
                           "throughput", "zero3", "--results", str(tmp_path / "results")], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OUT": str(out)})
    assert done.returncode == 1, done.stderr[-2000:]
    (report_path,) = out.glob("rehearsal-*.json")
    report = json.loads(report_path.read_text())
    assert set(report["not_run"]) == {"throughput", "zero3"} and "throughput" not in report
    assert (tmp_path / "results" / report_path.name).read_text() == report_path.read_text()

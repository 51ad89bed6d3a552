"""The GPU suite starts and skips cleanly on a machine without CUDA (CI), through its real entry points."""

from __future__ import annotations

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

"""benchmarks/scale.py's parts that decide its numbers: the shapes, the fit, and the process-tree monitor
(run on real child processes in folders shaped like the local runner's)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import COMPONENTS_DIR

REPO = COMPONENTS_DIR.parent


@pytest.fixture(scope="module")
def scale():
    spec = importlib.util.spec_from_file_location("scale_benchmark", REPO / "benchmarks" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_shapes_are_phi3_like_and_span_the_range(scale):
    import torch
    from transformers import Phi3ForCausalLM

    from maap_finetune.models.tiny import build_tokenizer

    tokenizer = build_tokenizer([REPO / "data" / "sample" / "chat.jsonl"])
    counts = []
    for name in ("0.1b", "0.2b", "0.4b"):
        config = scale.phi3_config(*scale.SHAPES[name], tokenizer)
        assert config.vocab_size == 32064 and config.hidden_size // config.num_attention_heads == 64
        assert 2.6 <= config.intermediate_size / config.hidden_size <= 2.9
        with torch.device("meta"):
            counts.append(sum(p.numel() for p in Phi3ForCausalLM(config).parameters()))
    assert counts == sorted(counts) and counts[0] >= 1e8 and counts[-1] <= 1.1e9


def test_fit_recovers_a_line_and_never_a_negative_slope(scale):
    line = scale.fit([1e8, 2e8, 4e8], [0.5e9 + 6 * x for x in (1e8, 2e8, 4e8)])
    assert line["bytes_per_param"] == pytest.approx(6.0)
    assert line["intercept_bytes"] == pytest.approx(0.5e9)
    assert line["r2"] == pytest.approx(1.0)
    flat = scale.fit([1e8, 2e8], [5e8, 4.9e8])  # noise on a flat step: no shrinking cost
    assert flat == {"intercept_bytes": 5e8, "bytes_per_param": 0.0, "r2": pytest.approx(flat["r2"])}


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_monitor_charges_memory_and_disk_to_the_step_folder(scale, tmp_path):
    step_dir = tmp_path / "runs" / "20260101-000000-abc" / "finetune" / "snapshot"
    step_dir.mkdir(parents=True)
    child = textwrap.dedent(f"""
        import time
        time.sleep(1.0)  # seen by the monitor before it writes anything
        block = bytearray(300 * 1024 * 1024)  # 300 MiB, touched
        for i in range(0, len(block), 4096):
            block[i] = 1
        open({str(step_dir / 'out.bin')!r}, 'wb').write(b'x' * 50_000_000)
        time.sleep(2.5)
    """)
    parent = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys; subprocess.run([sys.executable, '-c', sys.argv[1]], cwd=sys.argv[2], check=True)"),
        child, str(step_dir)])
    with scale.TreeMonitor(parent.pid, [tmp_path], interval_s=0.1, disk_every=2) as monitor:
        assert parent.wait(timeout=60) == 0
        time.sleep(0.3)
    sample = monitor.steps["finetune"]
    assert sample.peak_rss_bytes >= 300 * 1024 * 1024
    assert 45_000_000 <= sample.peak_disk_bytes <= 60_000_000
    assert set(monitor.steps) == {"finetune"}


def test_slopes_file_has_the_contract_the_capacity_check_reads(scale):
    costs = json.loads(scale.SLOPES_FILE.read_text(encoding="utf-8"))
    assert costs["schema_version"] == 1 and set(costs["steps"]) == set(scale.STEPS)
    for step, entry in costs["steps"].items():
        assert entry["compute"] == scale.STEP_COMPUTE[step]
        for kind in ("memory", "disk"):
            assert entry[kind]["intercept_bytes"] >= 0 and entry[kind]["bytes_per_param"] >= 0
    assert (REPO / costs["source"]).is_file(), "the slopes name the measurement they were fitted from"

"""benchmarks/finetune_memory.py's phase split: samples cut at the log lines that start each phase."""

from __future__ import annotations

import importlib.util
import json
import sys

from tests.helpers import COMPONENTS_DIR

REPO = COMPONENTS_DIR.parent


def _module():
    path = REPO / "benchmarks" / "finetune_memory.py"
    spec = importlib.util.spec_from_file_location("finetune_memory_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _timeline(size, label, parameters, train, merge, save):
    samples = [(0.0, 5), (1.0, train), (2.0, 5), (3.0, merge), (4.0, 5), (5.0, save)]
    events = [(0.5, "maap_finetune.training.tokenized: tokenized 8 rows"),
              (2.5, "maap_finetune.training.outputs: the merged model is saved in bf16 (merged_dtype auto)"),
              (4.5, "maap_finetune.training.outputs: merge parity: {'examples': 4}")]
    return {"size": size, "label": label, "parameters": parameters, "ru_maxrss_bytes": max(train, merge, save),
            "samples": samples, "events": events}


def test_phases_are_cut_at_the_steps_log_lines_and_slopes_fitted(tmp_path):
    bench = _module()
    assert bench.phase_peaks(_timeline("a", "x", 1, 10, 30, 20)) == {"train": 10, "merge": 30, "save": 20}
    paths = []
    for size, parameters, train, merge in (("small", 100, 1000, 1500), ("big", 300, 1800, 3500)):
        path = tmp_path / f"{size}-x" / "timeline.json"
        path.parent.mkdir()
        path.write_text(json.dumps(_timeline(size, "x", parameters, train, merge, 500)))
        paths.append(path)
    result = bench.report(paths, tmp_path / "out", "a note")
    assert [r["peak_phase"] for r in result["runs"]] == ["merge", "merge"]
    assert result["slopes_bytes_per_param"]["x"] == {"peak": 10.0, "train": 4.0, "merge": 10.0, "save": 0.0}
    assert "<work>/small-x/timeline.json" in result["command"] and str(tmp_path) not in result["command"]
    assert "a note" in (tmp_path / "out.md").read_text()

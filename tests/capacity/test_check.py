"""The prediction against VM sizes: lines read from step_costs.json, capacities from vm_sizes.json."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from maap_finetune.capacity.check import (GIB, STEP_COSTS, VM_SIZES, check_steps, default_cpu_size, find_vm_size,
                                          format_table, load_step_costs, load_vm_sizes, smallest_fitting)

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO = Path(__file__).resolve().parents[2]
PHI3_MINI_PARAMETERS = 3_821_079_552  # tests/capacity/test_parameters.py counts it from the config
CPU, GPU = ("cpu-cluster", "Standard_DS3_v2"), ("gpu-cluster", "Standard_NC24ads_A100_v4")  # before Standard_E8ds_v5
DEFAULT_PLACEMENT = {"data_prep": CPU, "finetune": GPU, "evaluate": GPU, "register": CPU, "export_onnx": CPU}


def test_every_vm_row_cites_its_azure_docs_page_and_has_its_figures():
    rows = json.loads(VM_SIZES.read_text())["sizes"]
    assert len({r["name"].lower() for r in rows}) == len(rows)
    for row in rows:
        assert row["source"].startswith("https://learn.microsoft.com/en-us/azure/virtual-machines/sizes/"), row
        assert row["vcpus"] > 0 and row["memory_gib"] > 0 and row["temp_disk_gib"] > 0, row
        assert (row["gpus"] > 0) == (row["gpu_memory_gb"] is not None), row


def test_the_table_covers_every_vm_size_the_repo_names():
    named = set()  # VM sizes have a digit after the family letters (Standard_LRS, a storage SKU, has none)
    for path in [*REPO_ROOT.glob("infra/**/*"), *REPO_ROOT.glob("environments/**/*"), REPO_ROOT / "README.md"]:
        if path.is_file() and path.suffix in (".bicep", ".json", ".yaml", ".yml", ".md", ".py"):
            named |= set(re.findall(r"Standard_[A-Za-z]+\d[A-Za-z0-9_]*", path.read_text(encoding="utf-8")))
    sizes = load_vm_sizes()
    assert named and {name for name in named if find_vm_size(name, sizes) is None} == set()


def test_sizes_are_found_whatever_the_case_azure_answers_in():
    sizes = load_vm_sizes()
    assert find_vm_size("STANDARD_DS3_V2", sizes).memory_bytes == 14 * GIB
    assert find_vm_size("Standard_ND96asr_A100_v4", sizes) is find_vm_size("Standard_ND96asr_v4", sizes)
    assert find_vm_size("Standard_Nope_v9", sizes) is None and find_vm_size(None, sizes) is None


def test_phi3_mini_on_the_default_clusters_export_onnx_does_not_fit_the_ds3_v2():
    costs = load_step_costs()
    rows = check_steps(DEFAULT_PLACEMENT, PHI3_MINI_PARAMETERS, costs, load_vm_sizes())
    verdicts = {row.step: row.verdict for row in rows}
    assert {step: v for step, v in verdicts.items() if step != "export_onnx"} == {
        "data_prep": "fits", "finetune": "fits", "evaluate": "fits", "register": "fits"}
    assert verdicts["export_onnx"].startswith("too small (memory")
    export = rows[-1]
    predicted = costs.steps["export_onnx"].memory.at(PHI3_MINI_PARAMETERS)
    assert export.memory_bytes == predicted > 0.85 * 15.0e9  # the DS3_v2's 14 GiB
    table = format_table(rows)
    assert "export_onnx  cpu-cluster  Standard_DS3_v2" in table and f"{predicted / 1e9:.1f} / 15.0 GB (" in table


def test_a_vm_that_fits_is_accepted_and_an_unknown_one_is_not_judged():
    placement = {"export_onnx": ("big", "Standard_E8ds_v5"), "register": ("odd", "Standard_Nope_v9")}
    export, register = check_steps(placement, PHI3_MINI_PARAMETERS, load_step_costs(), load_vm_sizes())
    assert export.verdict == "fits" and not export.refused
    assert register.verdict == "unknown VM size" and not register.refused
    unknown_model = check_steps(placement, None, load_step_costs(), load_vm_sizes())
    assert [row.verdict for row in unknown_model] == ["not checked", "unknown VM size"]


def test_the_prediction_is_read_from_the_costs_file(tmp_path):
    data = json.loads(STEP_COSTS.read_text())
    data["steps"]["export_onnx"]["memory"] = {"intercept_bytes": 1e9, "bytes_per_param": 1.0}
    data["steps"]["export_onnx"]["disk"] = {"intercept_bytes": 0, "bytes_per_param": 0.5}
    path = tmp_path / "step_costs.json"
    path.write_text(json.dumps(data))
    costs = load_step_costs(path)
    (row,) = check_steps({"export_onnx": ("cpu-cluster", "Standard_DS3_v2")}, 2_000_000_000, costs, load_vm_sizes())
    assert (row.memory_bytes, row.disk_bytes) == (3e9, 1e9) and row.verdict == "fits"
    data["schema_version"] = 2
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="schema_version 2"):
        load_step_costs(path)


def test_the_committed_costs_follow_the_contract():
    data = json.loads(STEP_COSTS.read_text())
    assert data["schema_version"] == 1 and data["base_dtype"] == "bfloat16"
    assert set(data["steps"]) == {"data_prep", "finetune", "evaluate", "register", "export_onnx"}
    for step, entry in data["steps"].items():
        assert entry["compute"] in ("cpu", "gpu")
        for kind in ("memory", "disk"):
            assert set(entry[kind]) >= {"intercept_bytes", "bytes_per_param"}, (step, kind)
    # The lines are fitted to the measurement they name: each measured point lies within 25% of its line.
    assert not data.get("provisional") and (REPO / data["source"]).is_file()
    measured = json.loads((REPO / data["source"]).read_text())
    costs = load_step_costs()
    for size in measured["sizes"]:
        for step, cost in costs.steps.items():
            peak = size["run"]["steps"][step]["peak_rss_bytes"]
            assert cost.memory.at(size["parameters"]) == pytest.approx(peak, rel=0.25), (step, size["name"])


def test_the_smallest_fitting_size_prefers_the_current_generation_then_less_memory():
    sizes = load_vm_sizes()
    assert smallest_fitting([(45.9e9, 25.8e9)], sizes, gpu=False).name == "Standard_E8ds_v5"
    assert smallest_fitting([(1e9, 1e9)], sizes, gpu=False).name == "Standard_F4s_v2"
    assert smallest_fitting([(1e9, 1e9)], sizes, gpu=True).name == "Standard_NC6s_v3"
    assert smallest_fitting([(1e9, 1e9)], sizes, gpu=True, min_gpu_memory_gb=80).name == "Standard_NC24ads_A100_v4"
    assert smallest_fitting([(1e15, 0)], sizes, gpu=False) is None
    assert default_cpu_size(PHI3_MINI_PARAMETERS, load_step_costs(), sizes).name == "Standard_E8ds_v5"

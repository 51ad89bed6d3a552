"""infra/main.bicep's CPU cluster holds the default pipeline's CPU steps for Phi-3-mini with 20% to spare,
by the committed step costs (src/maap_finetune/capacity/step_costs.json): when benchmarks/scale.py regenerates
them, this test says whether the default still fits, and which size the selection would pick."""

from __future__ import annotations

import json
from pathlib import Path

from maap_finetune.capacity.check import (DEFAULT_HEADROOM, default_cpu_size, find_vm_size, fits, load_step_costs,
                                          load_vm_sizes)
from maap_finetune.capacity.parameters import parameters_of_config

from pipelines.capacity import bicep_defaults

PHI3_MINI = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "phi3-mini-4k-config.json").read_text())


def test_the_bicep_cpu_size_fits_phi3_mini_with_20_percent_headroom():
    parameters = parameters_of_config(PHI3_MINI).parameters
    costs, sizes = load_step_costs(), load_vm_sizes()
    default = find_vm_size(bicep_defaults()["cpuVmSize"], sizes)
    assert default is not None, "infra/main.bicep's cpuVmSize is not in vm_sizes.json"
    needs = {step: (cost.memory.at(parameters), cost.disk.at(parameters)) for step, cost in costs.steps.items()
             if cost.compute == "cpu"}
    chosen = default_cpu_size(parameters, costs, sizes)
    assert fits(default, needs.values(), 1 - DEFAULT_HEADROOM), (
        f"{default.describe()} does not hold {needs} with {DEFAULT_HEADROOM:.0%} to spare; "
        f"the selection picks {chosen.describe() if chosen else 'no size in the table'}")
    assert set(needs) == {"data_prep", "register", "export_onnx"}

"""Will each step fit its VM? Predicted host memory and disk against the VM size, before anything is submitted.

    costs, sizes = load_step_costs(), load_vm_sizes()
    rows = check_steps({"export_onnx": ("cpu-cluster", "Standard_DS3_v2")}, 3_821_079_552, costs, sizes)
    print(format_table(rows))

A step's memory and disk are `intercept + bytes_per_param x parameters`, read from `step_costs.json`
(written by benchmarks/scale.py; nothing here hard-codes a slope). VM capacities come from `vm_sizes.json`,
each row citing its Azure docs page. A step is refused when it would use more than `USE_LIMIT` of its VM's
memory or temporary disk; an unknown VM size or an uncounted model is reported, not refused.
GPU memory is not predicted here: the repo has no estimate of it (training/preflight.py checks the
configuration, not the memory), so GPU steps are checked for host RAM and disk only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEP_COSTS = HERE / "step_costs.json"
VM_SIZES = HERE / "vm_sizes.json"
USE_LIMIT = 0.85  # refuse a step predicted above this share of its VM's memory or temp disk
DEFAULT_HEADROOM = 0.20  # infra/main.bicep's default CPU size leaves this much of memory and disk free
GIB = 1024**3


@dataclass(frozen=True)
class VmSize:
    name: str
    vcpus: int
    memory_bytes: int
    temp_disk_bytes: int | None  # None: the size has no local temp disk
    gpus: int
    gpu_memory_gb: float | None
    source: str
    previous_generation: bool = False

    def describe(self) -> str:
        gpu = f", {self.gpus} GPU ({self.gpu_memory_gb:g} GB)" if self.gpus else ""
        disk = f"{self.temp_disk_bytes / GIB:g} GiB temp disk" if self.temp_disk_bytes else "no temp disk"
        return f"{self.name} ({self.memory_bytes / GIB:g} GiB memory, {disk}{gpu})"


@dataclass(frozen=True)
class Line:
    intercept_bytes: float
    bytes_per_param: float

    def at(self, parameters: int) -> float:
        return self.intercept_bytes + self.bytes_per_param * parameters


@dataclass(frozen=True)
class StepCost:
    compute: str  # "cpu" or "gpu": where the measurement file says the step runs
    memory: Line
    disk: Line


@dataclass(frozen=True)
class StepCosts:
    steps: dict[str, StepCost]
    source: str
    provisional: bool
    path: Path


@dataclass
class StepCheck:
    step: str
    compute: str  # the cluster's name, as the pipeline places the step
    vm_name: str | None
    vm: VmSize | None
    memory_bytes: float | None  # predicted; None when the parameters are unknown
    disk_bytes: float | None
    refused: list[str] = field(default_factory=list)  # "memory" and/or "disk"
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        if self.vm is None:
            return "unknown VM size"
        if self.memory_bytes is None:
            return "not checked"
        return "too small (" + ", ".join(self.refused) + ")" if self.refused else "fits"


def load_step_costs(path: Path = STEP_COSTS) -> StepCosts:
    """The step-cost lines (schema_version 1; see ARCHITECTURE.md, capacity check)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema_version") != 1:
        raise ValueError(f"{path}: schema_version {data.get('schema_version')!r}, expected 1")
    steps = {}
    for step, entry in data["steps"].items():
        lines = {kind: Line(float(entry[kind]["intercept_bytes"]), float(entry[kind]["bytes_per_param"]))
                 for kind in ("memory", "disk")}
        steps[step] = StepCost(compute=entry["compute"], **lines)
    provisional = bool(data.get("provisional")) or any(
        (entry.get(kind) or {}).get("provisional") for entry in data["steps"].values() for kind in ("memory", "disk"))
    return StepCosts(steps=steps, source=str(data.get("source")), provisional=provisional, path=Path(path))


@functools.lru_cache(maxsize=None)
def _vm_table(path: Path) -> dict[str, VmSize]:
    table = {}
    for row in json.loads(path.read_text(encoding="utf-8"))["sizes"]:
        size = VmSize(
            name=row["name"], vcpus=int(row["vcpus"]), memory_bytes=int(row["memory_gib"] * GIB),
            temp_disk_bytes=int(row["temp_disk_gib"] * GIB) if row.get("temp_disk_gib") else None,
            gpus=int(row.get("gpus") or 0), gpu_memory_gb=row.get("gpu_memory_gb"), source=row["source"],
            previous_generation=bool(row.get("previous_generation")),
        )
        for name in [row["name"], *row.get("aliases", [])]:
            table[name.lower()] = size
    return table


def load_vm_sizes(path: Path = VM_SIZES) -> dict[str, VmSize]:
    """VM sizes by lower-case name (Azure answers sizes in capitals: STANDARD_DS3_V2)."""
    return dict(_vm_table(Path(path)))


def find_vm_size(name: str | None, sizes: Mapping[str, VmSize]) -> VmSize | None:
    return sizes.get(name.lower()) if name else None


def over_limit(needed: float, capacity: int | None, limit: float) -> bool:
    return capacity is not None and needed > limit * capacity


def check_steps(placement: Mapping[str, tuple[str, str | None]], parameters: int | None, costs: StepCosts,
                sizes: Mapping[str, VmSize], limit: float = USE_LIMIT) -> list[StepCheck]:
    """One row per placed step: `placement` maps step -> (cluster name, VM size name or None)."""
    rows = []
    for step, (compute, vm_name) in placement.items():
        cost = costs.steps.get(step)
        vm = find_vm_size(vm_name, sizes)
        row = StepCheck(step=step, compute=compute, vm_name=vm_name, vm=vm, memory_bytes=None, disk_bytes=None)
        if cost is None:
            row.notes.append(f"{costs.path.name} has no line for {step}")
        elif parameters is not None:
            row.memory_bytes, row.disk_bytes = cost.memory.at(parameters), cost.disk.at(parameters)
        if vm is not None and row.memory_bytes is not None:
            if over_limit(row.memory_bytes, vm.memory_bytes, limit):
                row.refused.append("memory")
            if over_limit(row.disk_bytes, vm.temp_disk_bytes, limit):
                row.refused.append("disk")
            if vm.temp_disk_bytes is None:
                row.notes.append(f"{vm.name} has no temp disk: disk not checked")
        rows.append(row)
    return rows


def fits(size: VmSize, needs: Iterable[tuple[float, float]], limit: float) -> bool:
    """Whether `size` holds every (memory, disk) in `needs` within `limit` of its capacity."""
    return all(not over_limit(memory, size.memory_bytes, limit) and size.temp_disk_bytes is not None
               and not over_limit(disk, size.temp_disk_bytes, limit) for memory, disk in needs)


def smallest_fitting(needs: Iterable[tuple[float, float]], sizes: Mapping[str, VmSize], *, gpu: bool,
                     limit: float = USE_LIMIT, min_gpu_memory_gb: float = 0) -> VmSize | None:
    """The VM size that holds every (memory, disk) of `needs`: current generation first, then the least memory,
    then the fewest vCPUs, then the name. CPU sizes only unless `gpu` (GPU sizes with at least
    `min_gpu_memory_gb` in all only)."""
    needs = list(needs)
    candidates = {s.name: s for s in sizes.values() if (s.gpus > 0) == gpu and fits(s, needs, limit)
                  and (s.gpu_memory_gb or 0) >= min_gpu_memory_gb}
    ranked = sorted(candidates.values(), key=lambda s: (s.previous_generation, s.memory_bytes, s.vcpus, s.name))
    return ranked[0] if ranked else None


def _gb(value: float) -> str:
    return f"{value / 1e9:.1f}"


def _versus(needed: float | None, capacity: int | None) -> str:
    if needed is None:
        return "-"
    if capacity is None:
        return f"{_gb(needed)} / - GB"
    return f"{_gb(needed)} / {_gb(capacity)} GB ({needed / capacity:.0%})"


def format_table(rows: list[StepCheck]) -> str:
    header = ("step", "compute", "VM size", "memory (predicted / VM)", "temp disk (predicted / VM)", "verdict")
    body = [(r.step, r.compute, r.vm.name if r.vm else (r.vm_name or "?"),
             _versus(r.memory_bytes, r.vm.memory_bytes if r.vm else None),
             _versus(r.disk_bytes, r.vm.temp_disk_bytes if r.vm else None), r.verdict) for r in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    return "\n".join("  " + line for line in lines)


def default_cpu_size(parameters: int, costs: StepCosts, sizes: Mapping[str, VmSize],
                     headroom: float = DEFAULT_HEADROOM) -> VmSize | None:
    """The CPU cluster size for a pipeline whose CPU steps (`compute: cpu` in the costs file) handle a base model of
    `parameters`, leaving `headroom` of memory and temp disk free (infra/main.bicep's cpuVmSize; tests/capacity)."""
    needs = [(cost.memory.at(parameters), cost.disk.at(parameters)) for cost in costs.steps.values()
             if cost.compute == "cpu"]
    return smallest_fitting(needs, sizes, gpu=False, limit=1 - headroom)

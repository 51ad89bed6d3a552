"""The capacity check of submit.py: will each step of the built pipeline fit the VM of the cluster it runs on?

    python pipelines/submit.py --dry-run --sample-data --set model_path=./phi3-config-only   # prints the table

Each node's cluster comes from the built pipeline (`--compute` for Fine-Tune and Evaluate, `--cpu-compute` for
the others); its VM size from the workspace (`ml_client.compute.get(name).size`) when submitting, and from
infra/main.bicep's defaults (gpuVmSize, cpuVmSize) in a dry run or --validate, which read no workspace.
The base model's parameters come from its folder (config.json is enough), a workspace or registry model's tags
(`model_size_bytes`, as Register writes it), or its Hugging Face config (the local cache only, offline).
The prediction itself is maap_finetune.capacity.check. `--force` turns a refusal into a warning.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from maap_finetune.capacity.check import (USE_LIMIT, StepCheck, check_steps, format_table, load_step_costs,
                                          fits, load_vm_sizes, smallest_fitting)
from maap_finetune.capacity.parameters import ParameterCount, parameters_of_config, parameters_of_folder
from maap_finetune.common.errors import ConfigErrors

from pipelines import registry_models
from pipelines.definition.inputs import GPU_STEPS, REPO_ROOT, is_local_path

BICEP = REPO_ROOT / "infra" / "main.bicep"
_WORKSPACE_MODEL = re.compile(r"^azureml:(?P<name>[^:/@]+):(?P<version>[^:/@]+)$")


def bicep_defaults(path: Path = BICEP) -> dict[str, str]:
    """The string parameters' defaults of infra/main.bicep (cpuVmSize, gpuClusterName, ...)."""
    text = path.read_text(encoding="utf-8")
    return {m.group(1): m.group(2) for m in re.finditer(r"^param (\w+) string = '([^']*)'$", text, re.M)}


# ------------------------------------------------------------------------------------------
# The base model's parameters


def parameters_of_hub_model(model_id: str, offline: bool) -> ParameterCount:
    """From the Hub's config.json: the local cache only when `offline` (a dry run touches no network)."""
    from huggingface_hub import hf_hub_download

    from maap_finetune.models.hub import describe_hub_error

    try:
        path = hf_hub_download(model_id, "config.json", local_files_only=offline)
    except Exception as err:
        reason = describe_hub_error(err)
        if reason is None:
            raise
        where = "not in the local Hugging Face cache (a dry run reads no network)" if offline else reason
        return ParameterCount(None, f"{model_id}: config.json {where}")
    import json

    counted = parameters_of_config(json.loads(Path(path).read_text(encoding="utf-8")))
    return ParameterCount(counted.parameters, f"{model_id} {counted.how}")


def parameters_of_azure_model(model, label: str) -> ParameterCount:
    """From a registered model's `model_size_bytes` tag (Register writes it; bf16 weights assumed: 2 bytes each)."""
    from maap_finetune.registry.tags import MODEL_SIZE_TAG

    tags = dict(getattr(model, "tags", None) or {})
    try:
        size = int(tags[MODEL_SIZE_TAG])
    except (KeyError, TypeError, ValueError):
        return ParameterCount(None, f"{label} has no {MODEL_SIZE_TAG} tag to count parameters from")
    return ParameterCount(size // 2, f"{label} tag {MODEL_SIZE_TAG} ({size} bytes, bf16 assumed)")


def base_model_parameters(inputs: dict[str, Any], ml_client=None, registry_client=None,
                          azure_model=None) -> ParameterCount:
    """The parameters of the base model that `inputs` (model_path or model_name) names. Without `ml_client` (a dry
    run) nothing is read from Azure, and the Hub only from the local cache; `registry_client(name)` gives the client
    of a registry (default: registry_models.registry_client); `azure_model` is that model when the caller has read
    it already."""
    path, name = inputs.get("model_path"), inputs.get("model_name")
    path = str(getattr(path, "path", path) or "")
    if path and is_local_path(path):
        return parameters_of_folder(Path(path).expanduser())
    workspace, registry = _WORKSPACE_MODEL.match(path), registry_models.parse(path)
    if workspace or registry:
        if azure_model is not None:
            return parameters_of_azure_model(azure_model, path)
        if ml_client is None:
            return ParameterCount(None, f"{path}: a dry run reads no workspace or registry")
        from azure.core.exceptions import ResourceNotFoundError

        try:
            if workspace:
                model = ml_client.models.get(name=workspace["name"], version=workspace["version"])
            else:  # a version or a label, as the registry check reads it
                client = (registry_client or registry_models.registry_client)(registry.registry)
                model = client.models.get(name=registry.name, **(
                    {"version": registry.version} if registry.version else {"label": registry.label}))
        except ResourceNotFoundError:
            return ParameterCount(None, f"{path}: not found")
        return parameters_of_azure_model(model, path)
    if path:
        return ParameterCount(None, f"{path}: cannot count the parameters of this kind of model_path")
    if name:
        return parameters_of_hub_model(str(name), offline=ml_client is None)
    return ParameterCount(None, "no base model set")


# ------------------------------------------------------------------------------------------
# Where each step runs


def placement(job, settings, computes: dict[str, Any] | None = None) -> tuple[dict[str, tuple[str, str | None]], str]:
    """step -> (cluster, VM size), and where the sizes came from. `computes` (name -> the workspace's compute)
    when submitting; without it, infra/main.bicep's defaults, the GPU cluster's for steps placed on --compute."""
    defaults = bicep_defaults()
    placed = {}
    for step, node in job.jobs.items():
        cluster = node.compute or job.settings.default_compute  # a node without one runs on the pipeline's
        if computes is not None:
            placed[step] = (cluster, getattr(computes.get(cluster), "size", None))
            continue
        on_gpu = cluster == settings.compute if cluster else step in GPU_STEPS
        kind = "gpu" if on_gpu else "cpu"
        placed[step] = (cluster or defaults[f"{kind}ClusterName"], defaults[f"{kind}VmSize"])
    source = ("the workspace's clusters" if computes is not None else
              f"{BICEP.relative_to(REPO_ROOT)} defaults (gpuVmSize, cpuVmSize; a dry run reads no workspace)")
    return placed, source


# ------------------------------------------------------------------------------------------
# The check


def _fix(row: StepCheck, rows: list[StepCheck], sizes) -> str:
    """What to change so that `row`'s step fits: a bigger cluster for every step on its cluster, the GPU cluster
    for the CPU steps where it holds them, or (Export ONNX) leaving the step out."""
    on_gpu = row.step in GPU_STEPS
    shared = [(r.memory_bytes, r.disk_bytes) for r in rows if r.compute == row.compute and r.memory_bytes is not None]
    gpu_memory = (row.vm.gpu_memory_gb or 0) if on_gpu else 0  # a bigger GPU size keeps the GPU memory it had
    bigger = smallest_fitting(shared, sizes, gpu=on_gpu, min_gpu_memory_gb=gpu_memory)
    flag = "--compute" if on_gpu else "--cpu-compute"
    fixes = [f"a {flag} cluster of a size that fits, such as {bigger.describe()}" if bigger else
             f"a {flag} cluster larger than every size in maap_finetune/capacity/vm_sizes.json"]
    gpu = next((r for r in rows if r.step in GPU_STEPS and r.vm is not None), None)
    if not on_gpu and gpu is not None and gpu.compute != row.compute and fits(gpu.vm, shared, USE_LIMIT):
        fixes.append(f"run the CPU steps on the GPU cluster ({gpu.compute}, {gpu.vm.name}, holds them): "
                     "leave out --cpu-compute")
    if row.step == "export_onnx":
        fixes.append("--set export_onnx=false (no ONNX export)")
    return "; or ".join(fixes)


def _refusal(row: StepCheck, fix: str) -> str:
    parts = []
    if "memory" in row.refused:
        parts.append(f"{row.memory_bytes / 1e9:.1f} GB of memory (above {USE_LIMIT:.0%} of its "
                     f"{row.vm.memory_bytes / 1e9:.1f} GB)")
    if "disk" in row.refused:
        parts.append(f"{row.disk_bytes / 1e9:.1f} GB of temp disk (above {USE_LIMIT:.0%} of its "
                     f"{row.vm.temp_disk_bytes / 1e9:.1f} GB)")
    return f"{row.step} on {row.compute} ({row.vm.name}) needs about {' and '.join(parts)}. Fix: {fix}"


def check_capacity(job, settings, *, computes: dict[str, Any] | None = None, ml_client=None, registry_client=None,
                   azure_model=None, force: bool = False, out=None) -> list[StepCheck]:
    """Print the capacity table to `out`; raise ConfigErrors for steps too big for their VM (a warning with `force`).
    An unknown VM size, or a base model whose parameters cannot be told, is a warning."""
    out = out or sys.stderr
    costs, sizes = load_step_costs(), load_vm_sizes()
    counted = base_model_parameters(settings.inputs, ml_client=ml_client, registry_client=registry_client,
                                    azure_model=azure_model)
    placed, source = placement(job, settings, computes)
    rows = check_steps(placed, counted.parameters, costs, sizes)
    count = f"{counted.parameters / 1e9:.2f} B parameters, from {counted.how}" if counted.parameters else counted.how
    provisional = ", provisional" if costs.provisional else ""
    print(f"capacity check (base model: {count}; step costs: {costs.source}{provisional}; VM sizes: {source}; "
          f"refused above {USE_LIMIT:.0%} of a VM's memory or temp disk; GPU memory is not predicted):", file=out)
    print(format_table(rows), file=out)
    for row in rows:
        for note in row.notes:
            print(f"  note: {row.step}: {note}", file=out)
        if row.vm is None:
            print(f"warning: {row.step}: VM size {row.vm_name or 'unknown'} of {row.compute} is not in "
                  "maap_finetune/capacity/vm_sizes.json; its capacity is not checked", file=out)
    if counted.parameters is None:
        print(f"warning: the base model's size is unknown ({counted.how}); capacity not checked", file=out)
    problems = [_refusal(row, _fix(row, rows, sizes)) for row in rows if row.refused]
    if problems and force:
        for problem in problems:
            print(f"warning: --force: {problem}", file=out)
    elif problems:
        raise ConfigErrors(problems, header="the capacity check refused the pipeline (--force submits anyway)")
    return rows

"""A `PipelineJob` as runnable steps: each node's command, code, bindings and distribution, in dependency order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from pipelines.definition.command import NODE_OUTPUT, PARENT_INPUT


@dataclass(frozen=True)
class Binding:
    """Where a node input's value comes from: a value, another node's output, or nothing."""

    kind: str  # "value" | "output" | "unset"
    value: Any = None
    node: str | None = None
    port: str | None = None


@dataclass
class StepPlan:
    name: str
    display_name: str
    command: str
    code_dir: Path
    includes: list[Path]
    input_specs: dict[str, Any]
    output_specs: dict[str, Any]
    bindings: dict[str, Binding]
    depends_on: list[str]
    distribution: str | None = None  # "pytorch" or None
    process_count: int = 1
    instance_count: int = 1
    environment_variables: dict[str, str] = field(default_factory=dict)  # the node's, as Azure ML sets them
    sweep: Any = None  # the SDK's Sweep node when the node is a sweep (run by pipelines/local/sweep.py)


@dataclass
class StepResult:
    name: str
    seconds: float
    outputs: dict[str, Path]
    log_paths: list[Path]
    mlflow_run_id: str | None


def _node_input_value(node_input) -> Any:
    """The literal or `Input` a node input holds (the SDK has no public accessor)."""
    return getattr(node_input, "_data", node_input)


def plan_pipeline(job) -> list[StepPlan]:
    """The job's nodes as runnable steps, in dependency order (stable: declaration order on ties)."""
    job_dict = job._to_dict()  # the same bindings Azure ML receives
    pipeline_values = {name: pipeline_input.result() for name, pipeline_input in job.inputs.items()}
    steps: dict[str, StepPlan] = {}
    for node_name, node in job.jobs.items():
        is_sweep = getattr(node, "type", None) == "sweep"
        component = node.trial if is_sweep else node.component  # a sweep runs its trial component
        if getattr(component, "type", "command") != "command" or not getattr(component, "command", None):
            raise UserError(f"node {node_name!r}: the local runner runs command components only")
        base = Path(component.base_path)
        node_inputs = (job_dict["jobs"][node_name].get("inputs")) or {}
        bindings: dict[str, Binding] = {}
        depends_on: list[str] = []
        for name in component.inputs:
            raw = node_inputs.get(name)
            path = raw.get("path") if isinstance(raw, dict) else raw
            parent_match = PARENT_INPUT.match(path) if isinstance(path, str) else None
            output_match = NODE_OUTPUT.match(path) if isinstance(path, str) else None
            if raw is None:
                bindings[name] = Binding("unset")
            elif parent_match:
                value = pipeline_values.get(parent_match.group(1))
                bindings[name] = Binding("value", value) if value is not None else Binding("unset")
            elif output_match:
                bindings[name] = Binding("output", node=output_match.group(1), port=output_match.group(2))
                if output_match.group(1) not in depends_on:
                    depends_on.append(output_match.group(1))
            else:
                bindings[name] = Binding("value", _node_input_value(node.inputs[name]))
        distribution = (None if is_sweep else node.distribution) or getattr(component, "distribution", None)
        dist_type = getattr(distribution, "type", None) if distribution is not None else None
        if dist_type is not None and str(dist_type).lower() != "pytorch":
            raise UserError(f"node {node_name!r}: the local runner runs PyTorch distribution only, not {dist_type!r}")
        resources = node.resources or getattr(component, "resources", None)
        steps[node_name] = StepPlan(
            name=node_name,
            display_name=getattr(component, "display_name", None) or node_name,
            command=component.command,
            code_dir=(base / str(component.code or ".")).resolve(),
            includes=[(base / include).resolve() for include in (component.additional_includes or [])],
            input_specs=dict(component.inputs),
            output_specs=dict(component.outputs),
            bindings=bindings,
            depends_on=depends_on,
            distribution="pytorch" if dist_type is not None else None,
            process_count=int(getattr(distribution, "process_count_per_instance", None) or 1) if dist_type else 1,
            instance_count=int(getattr(resources, "instance_count", None) or 1),
            environment_variables={str(k): str(v) for k, v in (getattr(node, "environment_variables", None) or {}).items()},
            sweep=node if is_sweep else None,
        )
    return topological_order(steps)


def topological_order(steps: Mapping[str, StepPlan]) -> list[StepPlan]:
    order: list[StepPlan] = []
    done: set[str] = set()
    pending = list(steps)
    for step in steps.values():
        for dependency in step.depends_on:
            if dependency not in steps:
                raise UserError(f"node {step.name!r} reads an output of {dependency!r}, which is not in the pipeline")
    while pending:
        ready = [name for name in pending if all(d in done for d in steps[name].depends_on)]
        if not ready:
            raise UserError(f"the pipeline has a dependency cycle among {', '.join(pending)}")
        for name in ready:
            order.append(steps[name])
            done.add(name)
            pending.remove(name)
    return order

"""Which environment each step runs in.

Every step runs in the environment its spec.yaml names, except Fine-Tune with training_method grpo:
it runs in environments/rft-gpu, train-gpu's stack plus vLLM (for use_vllm's colocate generation).
vLLM cannot join train-gpu, whose inference server pins opentelemetry against it (see
environments/rft-gpu/context/requirements.txt); azureml-assets runs its GRPO pipeline in a separate
image for the same kind of reason. The node's component is loaded with its environment replaced, so the
anonymous component Azure ML registers at submission runs there (a node-level `environment` is not sent).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from maap_finetune.training.plan import RFT_ENVIRONMENT  # the folder Fine-Tune's vLLM refusals name
from pipelines.definition.inputs import COMPONENTS_DIR, REPO_ROOT

# training_method -> the environment folder Fine-Tune runs in instead of its spec.yaml's
FINETUNE_ENVIRONMENT_BY_METHOD = {"grpo": RFT_ENVIRONMENT}


def finetune_environment(values: dict[str, Any]) -> str | None:
    """The environments/<folder> Fine-Tune runs in for these pipeline values, None for its spec.yaml's."""
    return FINETUNE_ENVIRONMENT_BY_METHOD.get(str(values.get("training_method") or ""))


def step_component_in(step: str, folder: str):
    """`step`'s component loaded as if its spec.yaml named environments/<folder>: a `file:` reference,
    so Azure ML builds it as an anonymous environment exactly like the spec's own."""
    from azure.ai.ml import load_component

    override = {"environment": f"file:../../environments/{folder}/environment.yaml"}
    return load_component(source=COMPONENTS_DIR / step / "spec.yaml", params_override=[override])


def environment_folder(environment) -> str:
    """environments/<folder> of a loaded component's environment (its YAML's folder)."""
    return Path(os.path.normpath(environment._base_path)).relative_to(REPO_ROOT).as_posix()


def step_environments(job) -> dict[str, str]:
    """Step -> environments/<folder> of the environment it runs in (as --dry-run and --validate say)."""
    return {step: environment_folder((node.trial if node.type == "sweep" else node.component).environment)
            for step, node in job.jobs.items()}


def environments_line(job) -> str:
    """One line naming each step's environment folder, for --dry-run and --validate."""
    return "environments: " + ", ".join(f"{step} {folder}" for step, folder in step_environments(job).items())

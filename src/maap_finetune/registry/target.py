"""Where Register runs, and which pipeline run a step belongs to.

The rule (one function, `running_in_azure_ml`): Register is inside an Azure ML job when
`MLFLOW_TRACKING_URI` starts with `azureml://`, or when both `AZUREML_RUN_ID` and
`AZUREML_ARM_SUBSCRIPTION` are set (Azure ML sets all three in every job). Anything else, such as
the local runner's `sqlite:///...` tracking URI, is a local run and registers in the MLflow registry
the tracking URI points at.

Where a model already lives (so Register does not upload it a second time): inside an Azure ML job
Fine-Tune records its job name, output name and workspace in the MLmodel `metadata`
(`job_output_metadata`); Register turns them into `azureml://jobs/<job>/outputs/<output>`
(`job_output_uri`), a path `Model(path=...)` takes without uploading.

The pipeline run id (the key that makes registration idempotent): in Azure ML `AZUREML_ROOT_RUN_ID`
(the pipeline job) or else the step run's `mlflow.rootRunId` tag; otherwise (and as the last
fallback in Azure ML) the `mlflow.parentRunId` tag of the step's MLflow run (the local runner's
pipeline run); a step run without a parent is its own pipeline run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from maap_finetune.common.errors import UserError

AZUREML_URI = re.compile(
    r"^azureml://[^/]+/mlflow/v[0-9.]+/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.MachineLearningServices/workspaces/(?P<workspace>[^/?]+)",
    re.IGNORECASE,
)
WORKSPACE_ENV = {
    "subscription": "AZUREML_ARM_SUBSCRIPTION",
    "resource_group": "AZUREML_ARM_RESOURCEGROUP",
    "workspace": "AZUREML_ARM_WORKSPACE_NAME",
}


def running_in_azure_ml(environ: Mapping[str, str] = os.environ) -> bool:
    """True inside an Azure ML job (see the module docstring for the rule)."""
    if environ.get("MLFLOW_TRACKING_URI", "").lower().startswith("azureml://"):
        return True
    return bool(environ.get("AZUREML_RUN_ID")) and bool(environ.get("AZUREML_ARM_SUBSCRIPTION"))


# MLmodel metadata keys Fine-Tune writes inside Azure ML (see the module docstring).
SOURCE_JOB = "azureml_job"
SOURCE_OUTPUT = "azureml_output"
SOURCE_WORKSPACE = "azureml_workspace"


@dataclass(frozen=True)
class Workspace:
    subscription: str
    resource_group: str
    workspace: str

    @property
    def key(self) -> str:
        return f"{self.subscription}/{self.resource_group}/{self.workspace}".lower()


def job_workspace(environ: Mapping[str, str] = os.environ) -> Workspace:
    """The job's workspace from AZUREML_ARM_* variables, else from the azureml:// tracking URI."""
    values = {field: environ.get(var) for field, var in WORKSPACE_ENV.items()}
    if not all(values.values()):
        match = AZUREML_URI.match(environ.get("MLFLOW_TRACKING_URI", ""))
        if match:
            values = {k: values[k] or match.group(k) for k in values}
    missing = [WORKSPACE_ENV[k] for k, v in values.items() if not v]
    if missing:
        raise UserError(
            f"inside an Azure ML job but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set and the "
            "tracking URI names no workspace; Register needs the job's workspace to register the model"
        )
    return Workspace(**values)


def pipeline_run_id(step_run_id: str | None, parent_run_id: str | None,
                    environ: Mapping[str, str] = os.environ, root_run_id: str | None = None) -> str | None:
    if running_in_azure_ml(environ):
        if environ.get("AZUREML_ROOT_RUN_ID"):
            return environ["AZUREML_ROOT_RUN_ID"]
        if root_run_id and root_run_id != step_run_id:
            return root_run_id
    return parent_run_id or step_run_id


def run_ids(run) -> tuple[str | None, str | None]:
    """(the step's MLflow run id, its pipeline run id) of an active step run (`tracking.step_run()`), or None."""
    step_run_id = run.info.run_id if run is not None else None
    tags = run.data.tags if run is not None else {}
    return step_run_id, pipeline_run_id(step_run_id, tags.get("mlflow.parentRunId"), root_run_id=tags.get("mlflow.rootRunId"))


def job_output_metadata(output_name: str, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Inside an Azure ML job: this job's name, `output_name` and the workspace; {} anywhere else."""
    if not running_in_azure_ml(environ) or not environ.get("AZUREML_RUN_ID"):
        return {}
    try:
        workspace = job_workspace(environ)
    except UserError:
        return {}
    return {SOURCE_JOB: environ["AZUREML_RUN_ID"], SOURCE_OUTPUT: output_name, SOURCE_WORKSPACE: workspace.key}


def job_output_uri(metadata: Mapping[str, object], environ: Mapping[str, str] = os.environ) -> str | None:
    """`azureml://jobs/<job>/outputs/<output>` of the job that wrote a model, when that job ran in this
    job's workspace (a job URI names no workspace); None otherwise."""
    job, output, workspace = (metadata.get(key) for key in (SOURCE_JOB, SOURCE_OUTPUT, SOURCE_WORKSPACE))
    if not (isinstance(job, str) and isinstance(output, str) and isinstance(workspace, str) and job and output):
        return None
    if not running_in_azure_ml(environ):
        return None
    try:
        here = job_workspace(environ)
    except UserError:
        return None
    if workspace.lower() != here.key:
        return None
    return f"azureml://jobs/{job}/outputs/{output}"

"""Register in the local MLflow registry (the one the tracking URI points at), without logged models.

MLflow 3's logged-models API is not used (Azure ML's tracking server does not serve it, and the
same code must work there): the model folder is uploaded to the step run with `log_artifacts`,
then `MlflowClient.create_model_version(source=<that artifact URI>, run_id=...)` registers it, and
`mlflow.pyfunc.load_model("models:/<name>/<version>")` proves the version loads.
Idempotent: a version tagged with the same pipeline run id is reused, not duplicated.
"""

from __future__ import annotations

from pathlib import Path

from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import PIPELINE_RUN_TAG

ARTIFACT_PATH = "mlflow_model"


def find_version(client, name: str, pipeline_run_id: str):
    """The existing version of `name` registered by `pipeline_run_id`, or None."""
    for version in client.search_model_versions(f"name = '{name}'"):
        if (version.tags or {}).get(PIPELINE_RUN_TAG) == pipeline_run_id:
            return version
    return None


def register_local(model_dir: Path, name: str, tags: dict[str, str], description: str, run, verify: bool = True,
                   artifact_path: str = ARTIFACT_PATH) -> ModelInfo:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    pipeline_run_id = tags[PIPELINE_RUN_TAG]
    existing = find_version(client, name, pipeline_run_id)
    if existing is not None:
        return ModelInfo(
            registered=True,
            name=name,
            version=str(existing.version),
            uri=f"models:/{name}/{existing.version}",
            target="mlflow",
            pipeline_run_id=pipeline_run_id,
            created=False,
            tags=dict(existing.tags or {}),
            reason=f"already registered as version {existing.version} by pipeline run {pipeline_run_id}; "
            "no new version created",
        )

    mlflow.log_artifacts(str(model_dir), artifact_path=artifact_path)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Fine-tuned with maap-finetune.")
    version = client.create_model_version(
        name=name, source=source, run_id=run.info.run_id, tags=tags, description=description
    )
    uri = f"models:/{name}/{version.version}"
    if verify:
        mlflow.pyfunc.load_model(uri)
    return ModelInfo(
        registered=True,
        name=name,
        version=str(version.version),
        uri=uri,
        target="mlflow",
        pipeline_run_id=pipeline_run_id,
        created=True,
        tags=tags,
        reason=f"quality gate passed; registered in the MLflow registry at {mlflow.get_registry_uri()} and loaded back "
        "with mlflow.pyfunc.load_model" if verify else "registered",
    )

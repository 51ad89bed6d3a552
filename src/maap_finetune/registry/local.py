"""Register in the local MLflow registry (the one the tracking URI points at), without logged models.

MLflow 3's logged-models API is not used (Azure ML's tracking server does not serve it, and the
same code must work there): the model folder is uploaded to the step run with `log_artifacts`,
then `MlflowClient.create_model_version(source=<that artifact URI>, run_id=...)` registers it, and
`mlflow.pyfunc.load_model("models:/<name>/<version>")` proves the version loads.
A version is created tagged `maap_verified: false` and marked true only after the load-back check; readers
refuse unverified versions. Idempotent on the content: a verified version with the same weights and data
(`content_sha256`) is reused, whichever pipeline run registered it; so is one of the same pipeline run.
"""

from __future__ import annotations

from pathlib import Path

from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import CONTENT_TAG, PIPELINE_RUN_TAG, VERIFIED_TAG, content_sha256, is_unverified

ARTIFACT_PATH = "mlflow_model"


def find_version(client, name: str, pipeline_run_id: str, content: str | None = None):
    """The existing verified version of `name` with this content (or registered by `pipeline_run_id`), or None."""
    for version in client.search_model_versions(f"name = '{name}'"):
        tags = version.tags or {}
        if is_unverified(tags):
            continue
        if (content is not None and tags.get(CONTENT_TAG) == content) or tags.get(PIPELINE_RUN_TAG) == pipeline_run_id:
            return version
    return None


def register_local(model_dir: Path, name: str, tags: dict[str, str], description: str, run, verify: bool = True,
                   artifact_path: str = ARTIFACT_PATH) -> ModelInfo:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    pipeline_run_id = tags[PIPELINE_RUN_TAG]
    content = content_sha256(model_dir, tags.get("dataset_sha256")) if verify else None
    existing = find_version(client, name, pipeline_run_id, content)
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
            reason=f"already registered as version {existing.version} (the same weights and data, or pipeline run "
            f"{pipeline_run_id}); no new version created",
        )

    mlflow.log_artifacts(str(model_dir), artifact_path=artifact_path)
    source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="Fine-tuned with maap-finetune.")
    if verify:
        tags = {**tags, CONTENT_TAG: content, VERIFIED_TAG: "false"}
    version = client.create_model_version(
        name=name, source=source, run_id=run.info.run_id, tags=tags, description=description
    )
    uri = f"models:/{name}/{version.version}"
    if verify:
        mlflow.pyfunc.load_model(uri)
        client.set_model_version_tag(name, str(version.version), VERIFIED_TAG, "true")
        tags[VERIFIED_TAG] = "true"
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

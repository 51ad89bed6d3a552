"""Register in the local MLflow registry (the one the tracking URI points at), without logged models.

MLflow 3's logged-models API is not used (Azure ML's tracking server does not serve it, and the
same code must work there): the model folder is uploaded to the step run with `log_artifacts`,
then `MlflowClient.create_model_version(source=<that artifact URI>, run_id=...)` registers it. The
version's lifecycle (created `maap_verified: false`, the registry's copy downloaded and loaded with
`check`, then marked verified; a verified version of the same content reused) is `registry.lifecycle`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maap_finetune.registry.lifecycle import load_mlflow_model, register_checked
from maap_finetune.registry.model_info import ModelInfo
from maap_finetune.registry.tags import PIPELINE_RUN_TAG, VERIFIED_TAG

ARTIFACT_PATH = "mlflow_model"


class MlflowVersions:
    """One registered model name in the MLflow registry, as `lifecycle.VersionStore`."""

    def __init__(self, name: str, model_dir: Path, description: str, run, artifact_path: str):
        from mlflow import MlflowClient

        self.client, self.name, self.model_dir = MlflowClient(), name, model_dir
        self.description, self.run, self.artifact_path = description, run, artifact_path

    def versions(self):
        return [(v.version, v.tags) for v in self.client.search_model_versions(f"name = '{self.name}'")]

    def create(self, tags: dict[str, str]) -> str:
        import mlflow
        from mlflow.exceptions import MlflowException

        mlflow.log_artifacts(str(self.model_dir), artifact_path=self.artifact_path)
        source = f"{self.run.info.artifact_uri.rstrip('/')}/{self.artifact_path}"
        try:
            self.client.get_registered_model(self.name)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(self.name, description="Fine-tuned with maap-finetune.")
        return self.client.create_model_version(name=self.name, source=source, run_id=self.run.info.run_id,
                                                tags=tags, description=self.description).version

    def download(self, version: str, scratch: Path) -> Path:
        import mlflow

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{self.name}/{version}",
                                                        dst_path=str(scratch)))

    def mark_verified(self, version: str) -> None:
        self.client.set_model_version_tag(self.name, str(version), VERIFIED_TAG, "true")


def register_local(model_dir: Path, name: str, tags: dict[str, str], description: str, run,
                   check: Callable[[Path], object] = load_mlflow_model, artifact_path: str = ARTIFACT_PATH) -> ModelInfo:
    import mlflow

    pipeline_run_id = tags[PIPELINE_RUN_TAG]
    store = MlflowVersions(name, model_dir, description, run, artifact_path)
    done = register_checked(store, model_dir, tags, check, f"{name}")
    if not done.created:
        reason = (f"already registered as version {done.version} (the same weights and data, or pipeline run "
                  f"{pipeline_run_id}); no new version created")
    else:
        reason = (f"quality gate passed; registered in the MLflow registry at {mlflow.get_registry_uri()}, "
                  "downloaded back and loaded")
    return ModelInfo(registered=True, name=name, version=done.version, uri=f"models:/{name}/{done.version}",
                     target="mlflow", pipeline_run_id=pipeline_run_id, created=done.created, tags=done.tags,
                     reason=reason)

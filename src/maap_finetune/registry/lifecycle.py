"""A registered version's lifecycle, the same for every registry (local MLflow, Azure ML) and every model
(Register's MLflow model, Export ONNX's folder).

1. Reuse: a verified version whose `content_sha256` (the weights and the dataset hash) matches, or one
   that the same pipeline run registered, is returned as it is. The key is the content, not the run id.
2. Create the version tagged `maap_verified: false`.
3. Download the registry's copy into a scratch folder; its content must hash the same as the folder
   that was registered, and `check` must load it (pyfunc for MLflow models, onnxruntime_genai for ONNX).
4. Tag it `maap_verified: true`. A step killed before this leaves a version that readers refuse
   (`tags.is_unverified`) and that the next run does not reuse.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from maap_finetune.registry.tags import CONTENT_TAG, PIPELINE_RUN_TAG, VERIFIED_TAG, content_sha256, is_unverified


SCRATCH_PREFIX = "maap-registry-copy-"  # where the registry's copy is downloaded (common.scratch)


class VersionStore(Protocol):
    """What the lifecycle needs from one registered model name in one registry."""

    def versions(self) -> Iterable[tuple[str, Mapping[str, str]]]:
        """(version, tags) of every version of the name; none when the name is not registered yet."""

    def create(self, tags: dict[str, str]) -> str:
        """Create a new version with `tags`; its version."""

    def download(self, version: str, scratch: Path) -> Path:
        """Download `version` under `scratch`; the folder that holds the model's files."""

    def mark_verified(self, version: str) -> None:
        """Set the version's VERIFIED_TAG to "true"."""


@dataclass(frozen=True)
class Registered:
    version: str
    tags: dict[str, str]
    created: bool


def reusable(versions: Iterable[tuple[str, Mapping[str, str]]], content: str,
             pipeline_run_id: str) -> tuple[str, Mapping[str, str]] | None:
    """The verified version with this content, or registered by `pipeline_run_id`; None without one."""
    for version, tags in versions:
        tags = tags or {}
        if is_unverified(tags):
            continue
        if tags.get(CONTENT_TAG) == content or tags.get(PIPELINE_RUN_TAG) == pipeline_run_id:
            return version, tags
    return None


class CopyDiffers(RuntimeError):
    """The registry's copy of a version is not the folder that was registered."""


def check_copy(folder: Path, content: str, dataset_sha256: str | None, check: Callable[[Path], object],
               what: str) -> None:
    """`folder` (a downloaded copy) has the registered content and loads with `check`."""
    copied = content_sha256(folder, dataset_sha256)
    if copied != content:
        raise CopyDiffers(f"the registry's copy of {what} differs from the folder registered (content sha256 "
                          f"{copied[:12]} instead of {content[:12]}): an upload was cut short or the files changed "
                          f"meanwhile; {what} stays {VERIFIED_TAG}=false, rerun the step")
    check(folder)


def register_checked(store: VersionStore, model_dir: Path, tags: Mapping[str, str],
                     check: Callable[[Path], object], what: str) -> Registered:
    """Reuse a verified version of the same content, or create one unverified, check its copy, mark it verified."""
    from maap_finetune.common.scratch import scratch_folder

    dataset = tags.get("dataset_sha256")
    content = content_sha256(model_dir, dataset)
    found = reusable(store.versions(), content, tags[PIPELINE_RUN_TAG])
    if found is not None:
        return Registered(version=str(found[0]), tags=dict(found[1]), created=False)
    tags = {**tags, CONTENT_TAG: content, VERIFIED_TAG: "false"}
    version = str(store.create(tags))
    with scratch_folder(SCRATCH_PREFIX) as scratch:
        check_copy(store.download(version, Path(scratch)), content, dataset, check, f"{what} version {version}")
    store.mark_verified(version)
    return Registered(version=version, tags={**tags, VERIFIED_TAG: "true"}, created=True)


def load_mlflow_model(folder: Path) -> None:
    """The check of an MLflow model folder: MLflow's own loader (the one a deployment uses)."""
    import mlflow.pyfunc

    mlflow.pyfunc.load_model(str(folder))

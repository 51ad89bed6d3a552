"""Where a fine-tuned model came from: dataset hash and the metadata its MLflow folder records.

Evaluate writes this lineage into metrics.json; Register turns it into model tags.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.data.prepared import METADATA_FILE, SPLITS, PreparedData


def dataset_sha256(prepared: PreparedData) -> str:
    """SHA-256 over metadata.json and the three split files, in a fixed order."""
    digest = hashlib.sha256()
    for path in [prepared.root / METADATA_FILE] + [prepared.split_path(split) for split in SPLITS]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_mlmodel(folder: str | Path) -> dict[str, Any]:
    """The parsed MLmodel file of an MLflow model folder; a UserError when it is not one."""
    import yaml

    path = Path(folder) / "MLmodel"
    if not path.is_file():
        raise UserError(f"{folder} is not an MLflow model folder: MLmodel is missing")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise UserError(f"{path}: invalid YAML ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top")
    return data


def model_metadata(folder: str | Path) -> dict[str, Any]:
    """The `metadata:` block Fine-Tune wrote into MLmodel (base_model, peft_method, ...), or {}."""
    return dict(read_mlmodel(folder).get("metadata") or {})

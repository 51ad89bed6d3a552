"""registration/model_info.json: what Register did, for people, the local runner and CI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MODEL_INFO_FILE = "model_info.json"


@dataclass
class ModelInfo:
    registered: bool
    reason: str
    name: str | None = None
    version: str | None = None
    uri: str | None = None
    target: str | None = None  # "mlflow" (local registry), "workspace" or "registry" (Azure ML)
    pipeline_run_id: str | None = None
    created: bool = False  # False when an earlier attempt of the same pipeline run had registered it
    tags: dict[str, str] = field(default_factory=dict)

    def write(self, folder: str | Path) -> Path:
        path = Path(folder) / MODEL_INFO_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    def summary(self) -> str:
        """One line for the log and the run summary."""
        if not self.registered:
            return f"model not registered: {self.reason}"
        return f"registered {self.name} version {self.version} ({self.uri}): {self.reason}"

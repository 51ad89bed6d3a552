"""Export tests reuse Evaluate's session fixtures (prepared sample chats, the tiny fine-tuned MLflow model).

Evaluate's output is written here as its contract says (decision.json, metrics.json) rather than run:
this step reads only the gate's decision from it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluate.conftest import (  # noqa: F401  (fixtures)
    finetuned_mlflow_model,
    mlflow_tracking,
    prepared_chat,
    tracking_template,
)
from tests.helpers import argv_from_spec, load_entry



def export_entry():
    return load_entry("export_onnx")


def write_decision(folder: Path, passed: bool, reason: str = "loss 2.1 beats the base model's 6.6") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decision.json").write_text(json.dumps({"passed": passed, "metric": "loss", "values": {}, "reason": reason}))
    (folder / "metrics.json").write_text(json.dumps({"task": "chat"}))
    return folder


@pytest.fixture
def gate_passed(tmp_path) -> Path:
    return write_decision(tmp_path / "evaluation", True)


def export_argv(tmp_path: Path, mlflow_model: Path, evaluation: Path, test_data: Path, **values) -> list[str]:
    """argv from spec.yaml's defaults, small enough for the tiny model."""
    values.setdefault("parity_prompts", 3)
    values.setdefault("parity_max_new_tokens", 12)
    values.setdefault("max_seq_length", 256)
    return argv_from_spec("export_onnx", mlflow_model=mlflow_model, evaluation=evaluation, test_data=test_data,
                          onnx_model=tmp_path / "onnx_model", export_report=tmp_path / "export_report", **values)

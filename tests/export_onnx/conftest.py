"""Export tests reuse Evaluate's session fixtures (prepared sample chats, the tiny fine-tuned MLflow model).

Evaluate's output is written here as its contract says (decision.json, metrics.json) rather than run, with
the parity reference Evaluate writes, computed by Evaluate's own function (once per session) on the CPU.
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
from tests.evaluate.fixtures import session_cached
from tests.helpers import argv_from_spec, load_entry

# The parity settings of these tests (export_argv passes them): small enough for the tiny model.
PARITY = {"parity_prompts": 3, "parity_max_new_tokens": 12, "max_seq_length": 256}


def export_entry():
    return load_entry("export_onnx")


def write_decision(folder: Path, passed: bool, reason: str = "loss 2.1 beats the base model's 6.6") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "decision.json").write_text(json.dumps({"passed": passed, "metric": "loss", "values": {}, "reason": reason}))
    (folder / "metrics.json").write_text(json.dumps({"task": "chat"}))
    return folder


def build_reference(mlflow_model: Path, test_data: Path, prompts: int, max_new_tokens: int,
                    max_seq_length: int) -> dict:
    """What Evaluate writes to parity_reference.json for `mlflow_model`, computed the way Evaluate does."""
    from maap_finetune.data.prepared import load_prepared
    from maap_finetune.evaluation import parity_reference
    from maap_finetune.evaluation.generation import load_model, read_examples
    from maap_finetune.models.source import resolve_model_source

    source = resolve_model_source(mlflow_model, None)
    prepared = load_prepared(test_data)
    examples = read_examples(prepared.split_path("test"), prepared.format, prompts)
    loaded = load_model(source.model, source.tokenizer, trust_remote_code=False, device="cpu")
    return parity_reference.build_reference(loaded, examples, source.model, source.tokenizer,
                                            prepared.split_path("test"), max_new_tokens, max_seq_length)


@pytest.fixture(scope="session")
def tiny_reference(finetuned_mlflow_model, prepared_chat) -> dict:
    return session_cached("export_parity_reference", lambda: build_reference(
        finetuned_mlflow_model, prepared_chat, PARITY["parity_prompts"], PARITY["parity_max_new_tokens"],
        PARITY["max_seq_length"]))


@pytest.fixture
def gate_passed(tmp_path, tiny_reference) -> Path:
    """Evaluate's output for the tiny fine-tuned model: gate passed, parity reference written."""
    from maap_finetune.evaluation.parity_reference import write_reference

    folder = write_decision(tmp_path / "evaluation", True)
    write_reference(folder, tiny_reference)
    return folder


def export_argv(tmp_path: Path, mlflow_model: Path, evaluation: Path, test_data: Path, **values) -> list[str]:
    """argv from spec.yaml's defaults, small enough for the tiny model."""
    for name, value in PARITY.items():
        values.setdefault(name, value)
    return argv_from_spec("export_onnx", mlflow_model=mlflow_model, evaluation=evaluation, test_data=test_data,
                          onnx_model=tmp_path / "onnx_model", export_report=tmp_path / "export_report", **values)

"""Session fixtures for evaluate tests: prepared sample data and a fine-tuned MLflow model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.evaluate.fixtures import save_chat_model, session_cached, train_tiny, write_prepared


@pytest.fixture(scope="session")
def prepared_chat(tmp_path_factory) -> Path:
    return session_cached("prepared_chat", lambda: write_prepared(tmp_path_factory.mktemp("prepared")))


@pytest.fixture(scope="session")
def finetuned_mlflow_model(tmp_path_factory, tiny_model_dir, prepared_chat) -> Path:
    def build():
        rows = [json.loads(line) for line in (prepared_chat / "train.jsonl").read_text().splitlines() if line.strip()]
        model, tokenizer = train_tiny(tiny_model_dir, rows)
        path = tmp_path_factory.mktemp("finetuned") / "mlflow_model"
        return save_chat_model(model, tokenizer, path, metadata={"base_model": "tiny-phi3", "peft_method": "none"})

    return session_cached("finetuned_mlflow_model", build)


@pytest.fixture(scope="session")
def untrained_mlflow_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The base model itself as the 'fine-tuned' model: no improvement, so the default gate fails."""

    def build():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
        path = tmp_path_factory.mktemp("untrained") / "mlflow_model"
        return save_chat_model(model, tokenizer, path, metadata={"base_model": "tiny-phi3", "peft_method": "lora"})

    return session_cached("untrained_mlflow_model", build)


@pytest.fixture(scope="session")
def tracking_template(tmp_path_factory) -> Path:
    from tests.evaluate.fixtures import migrated_tracking_db

    return session_cached("tracking_template", lambda: migrated_tracking_db(tmp_path_factory.mktemp("tracking")))


@pytest.fixture
def mlflow_tracking(tracking_template, tmp_path, monkeypatch):
    """tests/conftest.py's fixture, from a pre-migrated copy of the SQLite store."""
    import mlflow

    from tests.evaluate.fixtures import use_tracking_copy

    yield use_tracking_copy(tracking_template, tmp_path, monkeypatch)
    while mlflow.active_run():
        mlflow.end_run()

"""Fixtures shared by every test tier, and the rule that sorts tests into tiers.

Tiers: `make test` runs `pytest -m "not slow"` (static, unit and the one smoke run, the README's default
local run); `make test-all` runs everything. A test is `slow` when it is marked so, or, added here at
collection, when it needs the tiny model (it requests `tiny_model_dir`, directly or through another
fixture: such a test trains, generates with or saves a model), or when it needs the package index
(`network`). Tests that run real step or tool processes for tens of seconds (checkov, the GPU suite, Data
Prep through the local runner, wall-clock sweep limits) carry an explicit `@pytest.mark.slow`. A test marked
`smoke` stays in the fast tier whatever it requests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Never reach a hub from tests: everything is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "sample" / "chat.jsonl"

# Fixtures whose users are slow: every model a test touches is built from this one (no hub).
SLOW_FIXTURES = frozenset({"tiny_model_dir"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("smoke"):
            continue
        needs_model = SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if needs_model or item.get_closest_marker("network"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Phi-3-architecture model + tokenizer in Hugging Face layout, built once per session."""
    from maap_finetune.models.tiny import build_tiny_phi3

    return build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"), seed=0)


def track_to(uri: str, monkeypatch):
    """Point MLflow at `uri` as the local runner does (no step run yet); end any run left open after."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    import mlflow

    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


@pytest.fixture
def mlflow_tracking(tmp_path, monkeypatch) -> str:
    """A fresh SQLite store under tmp_path."""
    yield from track_to(f"sqlite:///{tmp_path / 'mlruns.db'}", monkeypatch)


@pytest.fixture
def sample_data() -> Path:
    return SAMPLE_DATA

"""Fixtures for Data Prep tests: one MLflow SQLite store per session (creating one costs seconds)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import track_to
from tests.helpers import argv_from_spec, load_entry


@pytest.fixture(scope="session")
def _session_tracking(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlruns.db'}"
    return uri


@pytest.fixture(autouse=True)
def data_prep_tracking(_session_tracking, monkeypatch):
    yield from track_to(_session_tracking, monkeypatch)


def write_jsonl(path: Path, rows, raw: bool = False) -> Path:
    """Write rows (dicts, or raw strings when raw=True) one per line."""
    with open(path, "w", encoding="utf-8", newline="") as handle:
        for row in rows:
            handle.write((row if raw else json.dumps(row, ensure_ascii=False)) + "\n")
    return path


def chat_row(i: int, system: bool = False) -> dict:
    messages = [{"role": "system", "content": "Be brief."}] if system else []
    messages += [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    return {"messages": messages}


class Prep:
    """Runs Data Prep's main(argv) the way the YAML would and reads what it wrote."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.module = load_entry("data_prep")
        self.count = 0

    def __call__(self, source: Path | None = None, **values):
        self.count += 1
        out = self.tmp_path / f"run{self.count}"
        if source is not None:
            key = "train_folder" if Path(source).is_dir() else "train_data"
            values.setdefault(key, source)
        values.setdefault("prepared_data", out / "prepared")
        values.setdefault("data_report", out / "report")
        argv = argv_from_spec("data_prep", **values)
        self.prepared = Path(values["prepared_data"])
        self.report_dir = Path(values["data_report"])
        self.report = self.module.main(argv)
        return self.report

    def rows(self, split: str | None = None) -> list[dict]:
        splits = [split] if split else ["train", "validation", "test"]
        rows = []
        for name in splits:
            with open(self.prepared / f"{name}.jsonl", encoding="utf-8") as handle:
                rows += [json.loads(line) for line in handle if line.strip()]
        return rows

    def metadata(self) -> dict:
        return json.loads((self.prepared / "metadata.json").read_text(encoding="utf-8"))


@pytest.fixture
def prep(tmp_path) -> Prep:
    return Prep(tmp_path)


@pytest.fixture
def all_rows_train():
    """Inputs that keep every row in train, so outputs can be compared row for row."""
    return {"validation_ratio": 0.0, "test_ratio": 0.0}


os.environ.setdefault("MPLBACKEND", "Agg")

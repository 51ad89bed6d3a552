"""Fixtures for the Fine-Tune tests: Data Prep's output contract built from the sample chats."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from maap_finetune.data.prepared import write_metadata

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "data" / "sample" / "chat.jsonl"


def write_prepared(folder: Path, rows: list[dict] | None = None, held_out: int = 12) -> Path:
    """train/validation/test JSONL + metadata.json from `rows` (default: the sample chats, seeded split)."""
    if rows is None:
        rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
        random.Random(42).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"test": rows[:held_out], "validation": rows[held_out : 2 * held_out], "train": rows[2 * held_out :]}
    meta = {}
    for name, split_rows in splits.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in split_rows), encoding="utf-8")
        meta[name] = {"file": f"{name}.jsonl", "rows": len(split_rows)}
    fmt = "text" if rows and "text" in rows[0] else "messages"
    write_metadata(folder, task="text" if fmt == "text" else "chat", format=fmt, splits=meta, label_set=None,
                   templates={}, source={"file": str(SAMPLE_DATA.name)})
    return folder


@pytest.fixture(scope="session")
def prepared_chat(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("prepared"))


def outputs(tmp_path: Path) -> dict[str, str]:
    return {
        "adapter": str(tmp_path / "adapter"),
        "mlflow_model": str(tmp_path / "mlflow_model"),
        "checkpoints": str(tmp_path / "checkpoints"),
    }

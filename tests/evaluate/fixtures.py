"""Fixtures for the evaluate and register tests: prepared data and a fine-tuned MLflow model.

The fine-tuned model is real: the tiny Phi-3 trained for a few dozen steps on the sample chats
(a plain full fine-tune, seeded), saved as an MLflow transformers-flavor model (llm/v1/chat).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from maap_finetune.data.prepared import write_metadata

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "data" / "sample" / "chat.jsonl"
_SESSION: dict[str, object] = {}


def session_cached(key: str, build):
    """Build once per test session, even when several conftests expose the same fixture."""
    if key not in _SESSION:
        _SESSION[key] = build()
    return _SESSION[key]


def write_prepared(folder: Path, rows: list[dict] | None = None, task: str = "chat", test_rows: int = 12,
                   label_set: list[str] | None = None, templates: dict | None = None) -> Path:
    """Data Prep's output contract from `rows` (default: the sample chats, seeded split)."""
    if rows is None:
        rows = [json.loads(line) for line in SAMPLE_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
        random.Random(42).shuffle(rows)
    folder.mkdir(parents=True, exist_ok=True)
    splits = {"test": rows[:test_rows], "validation": rows[test_rows : 2 * test_rows], "train": rows[2 * test_rows :]}
    for name, split_rows in splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as handle:
            for row in split_rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    write_metadata(
        folder,
        task=task,
        format="text" if task == "text" else "messages",
        splits={name: {"file": f"{name}.jsonl", "rows": len(r)} for name, r in splits.items()},
        label_set=label_set,
        templates=templates or {},
        source={"file": "fixture"},
    )
    return folder


def train_tiny(base_dir: Path, rows: list[dict], steps: int = 40, seed: int = 0, learning_rate: float = 3e-3):
    """A few full fine-tuning steps of the tiny model on chat rows; returns (model, tokenizer)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    texts = [tokenizer.apply_chat_template(r["messages"], tokenize=False) for r in rows]
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    generator = random.Random(seed)
    for _ in range(steps):
        batch = generator.sample(texts, k=min(8, len(texts)))
        enc = tokenizer(batch, add_special_tokens=False, padding=True, return_tensors="pt", truncation=True,
                        max_length=256)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = model(**enc, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    return model, tokenizer


def save_chat_model(model, tokenizer, path: Path, metadata: dict | None = None) -> Path:
    """The fine-tuned model as an MLflow transformers-flavor folder (task llm/v1/chat)."""
    try:
        from maap_finetune.registry.mlflow_model import save_mlflow_model
    except ImportError:  # before Fine-Tune's helper lands
        save_mlflow_model = None
    if save_mlflow_model is not None:
        return save_mlflow_model(model, tokenizer, path, metadata=metadata)
    import mlflow.transformers

    mlflow.transformers.save_model(
        {"model": model, "tokenizer": tokenizer},
        str(path),
        task="llm/v1/chat",
        input_example={"messages": [{"role": "user", "content": "What is the warranty on a new bike?"}]},
        metadata=metadata or {},
        pip_requirements=["mlflow", "transformers", "torch", "accelerate"],
    )
    return path


def migrated_tracking_db(folder: Path) -> Path:
    """An empty MLflow SQLite store with every migration applied (copied per test: migrating costs seconds)."""
    import mlflow

    path = folder / "template.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


def use_tracking_copy(template: Path, tmp_path: Path, monkeypatch) -> str:
    """Point MLflow at a fresh copy of `template` under tmp_path, as tests/conftest.py's mlflow_tracking does."""
    import shutil

    import mlflow

    db = tmp_path / "mlruns.db"
    shutil.copyfile(template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)  # artifacts of the default experiment go under ./mlruns
    mlflow.set_tracking_uri(uri)
    return uri

"""The prepared-data contract: what Data Prep writes and Fine-Tune and Evaluate read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
METADATA_FILE = "metadata.json"


@dataclass
class PreparedData:
    root: Path
    task: str
    format: str  # "messages" or "text"
    split_rows: dict[str, int]
    label_set: list[str] | None = None
    templates: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def split_path(self, split: str) -> Path:
        return self.root / self.metadata["splits"][split]["file"]

    def rows(self, split: str) -> Iterator[dict]:
        with open(self.split_path(split), encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    yield json.loads(line)


def load_prepared(folder: str | Path) -> PreparedData:
    root = Path(folder)
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        raise UserError(f"{root} is not Data Prep output: {METADATA_FILE} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{meta_path}: invalid JSON ({err})") from None
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{meta_path}: schema_version {meta.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    for split in SPLITS:
        entry = meta.get("splits", {}).get(split)
        if not entry or not (root / entry["file"]).is_file():
            raise UserError(f"{meta_path}: split {split!r} is missing or its file does not exist")
    return PreparedData(
        root=root,
        task=meta["task"],
        format=meta["format"],
        split_rows={s: int(meta["splits"][s]["rows"]) for s in SPLITS},
        label_set=meta.get("label_set"),
        templates=meta.get("templates") or {},
        metadata=meta,
    )


def write_metadata(folder: str | Path, **fields: Any) -> Path:
    """Write metadata.json; `fields` must include task, format and splits."""
    for key in ("task", "format", "splits"):
        if key not in fields:
            raise ValueError(f"metadata needs {key!r}")
    meta = {"schema_version": SCHEMA_VERSION, **fields}
    path = Path(folder) / METADATA_FILE
    path.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def prompt_and_reference(row: dict) -> tuple[list[dict], str]:
    """Split a `messages` row into the prompt (every message before the last) and the reference answer."""
    messages = row["messages"]
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("a prepared row's last message must be the assistant turn")
    return messages[:-1], messages[-1]["content"]


def parse_entities(completion: str, templates: dict[str, Any]) -> list[tuple[str, str]]:
    """Read an NER completion back into (type, text) pairs with the templates recorded in metadata.

    The inverse of how Data Prep renders entities (`entity`, `entity_separator`, `no_entities`), so
    Evaluate can score generated answers entity by entity. Lines that do not fit the template are
    skipped (a model's malformed output is a wrong answer, not an error).
    """
    import re

    entity = templates.get("entity", "{type}: {text}")
    separator = templates.get("entity_separator", "\n")
    none = templates.get("no_entities", "none")
    text = completion.strip()
    if not text or text == none:
        return []
    pattern = re.escape(entity).replace(r"\{type\}", r"(?P<type>.+?)").replace(r"\{text\}", r"(?P<text>.+)")
    matcher = re.compile(f"^{pattern}$", re.DOTALL)
    entities = []
    for part in text.split(separator):
        match = matcher.match(part.strip())
        if match:
            entities.append((match.group("type").strip(), match.group("text").strip()))
    return entities

"""A local lm-eval task for the tests: a YAML in a folder, over a JSONL it writes beside it, so nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

CHOICE_ROWS = [
    {"question": "The capital of France is", "choices": ["Paris", "London", "Rome"], "label": 0},
    {"question": "Two plus two equals", "choices": ["three", "four", "five"], "label": 1},
    {"question": "Water freezes at zero degrees", "choices": ["Celsius", "Kelvin"], "label": 0},
    {"question": "The opposite of hot is", "choices": ["warm", "loud", "cold"], "label": 2},
    {"question": "A week has seven", "choices": ["days", "hours", "years"], "label": 0},
    {"question": "def add(a, b): return a", "choices": ["- b", "+ b", "* b"], "label": 1},
]

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def write_choice_task(folder: Path, name: str = "maap_choice", rows: list[dict] | None = None) -> Path:
    """Write `name`.yaml and its rows under `folder`; return the folder (general_eval_include)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows or CHOICE_ROWS), encoding="utf-8")
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=json.dumps(str(data))), encoding="utf-8")
    return folder


def prompt(row: dict) -> str:
    """The task's doc_to_text, for a hand count."""
    return f"Question: {row['question']}\nAnswer:"

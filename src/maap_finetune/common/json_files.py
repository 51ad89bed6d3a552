"""Reading the JSON files steps hand each other (decision.json, metrics.json, ...), with errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError


def read_json_object(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path`; a UserError naming the file when it is not JSON or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data

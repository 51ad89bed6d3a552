"""Where a base model comes from: a folder (Hugging Face layout or an Azure ML MLflow model)
or a Hugging Face model id.

Azure ML's model catalog ships models as MLflow folders: `MLmodel` at the top, weights under
`data/model` and, for some, the tokenizer under `data/tokenizer`. Our own fine-tune output uses
the MLflow transformers flavor layout (`model/` and `components/tokenizer/`). Both resolve here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from maap_finetune.common.errors import UserError

_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


@dataclass(frozen=True)
class ModelSource:
    model: str  # a local folder or a Hugging Face id, as from_pretrained takes it
    tokenizer: str
    display_name: str  # what to record in tags and logs
    hub_id: str | None = None  # the Hugging Face id a local snapshot was fetched for (models.hub)

    @property
    def is_local(self) -> bool:
        return Path(self.model).is_dir()


def _has_weights_config(folder: Path) -> bool:
    return (folder / "config.json").is_file()


def resolve_model_source(model_path: str | Path | None, model_name: str | None) -> ModelSource:
    """Return where to load the model and tokenizer from; exactly one of the two must be given."""
    if bool(model_path) == bool(model_name):
        raise UserError(
            "give exactly one base model: --model_path (a folder input) or --model_name (a Hugging Face id)"
        )
    if model_name:
        if not _HF_ID.match(model_name) or ".." in model_name:
            raise UserError(
                f"--model_name {model_name!r} is not a Hugging Face model id (expected 'org/name' with letters, "
                "digits, '.', '_' or '-')"
            )
        return ModelSource(model=model_name, tokenizer=model_name, display_name=model_name)

    root = Path(model_path)
    if not root.is_dir():
        raise UserError(f"--model_path {root} is not a folder")
    candidates = [
        (root, root),
        (root / "model", root / "components" / "tokenizer"),  # MLflow transformers flavor (ours)
        (root / "data" / "model", root / "data" / "tokenizer"),  # Azure ML model catalog MLflow folder
    ]
    for model_dir, tokenizer_dir in candidates:
        if _has_weights_config(model_dir):
            if not (tokenizer_dir / "tokenizer_config.json").is_file():
                tokenizer_dir = model_dir
            return ModelSource(model=str(model_dir), tokenizer=str(tokenizer_dir), display_name=_display_name(root))
    found = sorted(p.name for p in root.iterdir())[:20]
    raise UserError(
        f"--model_path {root}: no config.json found at the top, under model/ or under data/model/ "
        f"(found: {', '.join(found) or 'nothing'})"
    )


def _display_name(root: Path) -> str:
    """A readable name for tags: the `_name_or_path` an MLmodel or config records, else the folder name."""
    import json

    for config in (root / "config.json", root / "model" / "config.json", root / "data" / "model" / "config.json"):
        if config.is_file():
            try:
                name = json.loads(config.read_text()).get("_name_or_path")
            except (OSError, ValueError):
                name = None
            if name and not Path(name).is_absolute():
                return str(name)
    return root.name

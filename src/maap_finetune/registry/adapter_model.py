"""Package the adapter alone (not merged) as an MLflow transformers-flavor chat model.

Register's `model_format adapter`: the MLflow folder holds the PEFT adapter (`peft/`), the tokenizer
with its chat template, a signature and an input example, but not the base weights. Where the base
comes from at load time:
- a Hugging Face Hub id (`model_name`): MLflow records the id and fetches the base from the Hub
  when the model loads (Azure ML endpoints need outbound access to huggingface.co);
- a local folder (`model_path`): MLflow records that folder's path (`base_model_path`), so the model
  loads only where that folder exists: fine on the machine of a local run, not in Azure ML, where
  an input folder lives only as long as its job (Register refuses that combination).

Written with `mlflow.transformers.save_model` (no logged-models API). MLflow's own fallback for a
PEFT model whose base is neither (saving the base weights with the adapter injected) writes a
model that loads with wrong weights, so it is never used here.
"""

from __future__ import annotations

import json
from pathlib import Path

from maap_finetune.common.errors import UserError


def adapter_base(adapter_dir: Path) -> str:
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"--adapter {adapter_dir}: adapter_config.json is missing (give Fine-Tune's adapter output; "
                        "peft_method none trains every weight and has no adapter, so register it merged)")
    return str(json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path") or "")


def save_adapter_model(adapter_dir: Path, tokenizer_dir: Path, base_model: str, base_is_local: bool, path: Path,
                       metadata: dict, trust_remote_code: bool = False) -> Path:
    """Write the adapter-only MLflow model to `path` (absent or empty); returns `path`."""
    import mlflow.transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from maap_finetune.registry.mlflow_model import CHAT_TASK, INPUT_EXAMPLE_CHAT, _default_requirements

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    if not getattr(tokenizer, "chat_template", None):
        raise UserError(f"{tokenizer_dir}: the tokenizer has no chat template; the chat task needs one")
    base = AutoModelForCausalLM.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    if path.exists():
        if any(path.iterdir()):
            raise FileExistsError(f"{path} is not empty")
        path.rmdir()
    mlflow.transformers.save_model(
        transformers_model={"model": model, "tokenizer": tokenizer},
        path=str(path),
        task=CHAT_TASK,
        input_example=INPUT_EXAMPLE_CHAT,
        metadata=dict(metadata),
        base_model_path=base_model if base_is_local else None,
        pip_requirements=_default_requirements() + _peft_requirement(),
    )
    return path


def _peft_requirement() -> list[str]:
    from importlib.metadata import version

    return [f"peft=={version('peft')}"]

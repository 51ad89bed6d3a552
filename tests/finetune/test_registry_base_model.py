"""A registry base model in the Azure ML catalog's MLflow layout (hftransformersv2: weights, config
and tokenizer apart under data/), with the real Phi-3-mini MLmodel and a tiny Phi-3's files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from maap_finetune.models.source import resolve_model_source
from tests.finetune.conftest import outputs
from tests.helpers import argv_from_spec, load_entry

FIXTURE = Path(__file__).parent / "fixtures" / "phi-3-mini-4k-instruct"
CONFIG_FILES = ("config.json", "generation_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def registry_layout(tiny_model_dir: Path, folder: Path) -> Path:
    """The catalog's folder: MLmodel from azureml-assets; data/model without config.json."""
    shutil.copytree(FIXTURE, folder, ignore=shutil.ignore_patterns("README.md"))
    data = folder / "data"
    for sub in ("model", "config", "tokenizer"):
        (data / sub).mkdir(parents=True)
    for item in tiny_model_dir.iterdir():
        sub = "config" if item.name in CONFIG_FILES else "tokenizer" if item.name in TOKENIZER_FILES else "model"
        shutil.copy2(item, data / sub / item.name)
    return folder


@pytest.fixture
def registry_model(tiny_model_dir, tmp_path) -> Path:
    return registry_layout(tiny_model_dir, tmp_path / "Phi-3-mini-4k-instruct")


def test_fixture_is_the_registry_layout(registry_model):
    import yaml

    mlmodel = yaml.safe_load((registry_model / "MLmodel").read_text())
    assert mlmodel["flavors"]["hftransformersv2"]["model_data"] == "data"
    assert not (registry_model / "data" / "model" / "config.json").exists()
    assert sorted(p.name for p in (registry_model / "data").iterdir()) == ["config", "model", "tokenizer"]


def test_source_joins_weights_and_config(registry_model):
    source = resolve_model_source(registry_model, None)
    model = Path(source.model)
    assert (model / "config.json").resolve() == (registry_model / "data" / "config" / "config.json").resolve()
    assert (model / "model.safetensors").resolve() == (registry_model / "data" / "model" / "model.safetensors").resolve()
    assert Path(source.tokenizer) == registry_model / "data" / "tokenizer"
    assert source.display_name == "Phi-3-mini-4k-instruct"  # MLmodel metadata.base_model_name
    assert resolve_model_source(registry_model, None).model == source.model  # one view per model folder


def test_model_loads_the_same_as_from_its_own_folder(registry_model, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve_model_source(registry_model, None)
    ours = AutoModelForCausalLM.from_pretrained(source.model)
    reference = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
    assert tokenizer.chat_template
    ids = tokenizer("How do I reset my password?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, reference(ids).logits)


def test_finetune_trains_from_the_registry_layout(registry_model, tmp_path, prepared_chat, mlflow_tracking):
    summary = load_entry("finetune").main(
        argv_from_spec("finetune", train_data=prepared_chat, model_path=registry_model, max_steps=1,
                       **outputs(tmp_path / "o"))
    )
    assert summary["steps"] == 1 and summary["base_model"] == "Phi-3-mini-4k-instruct"
    assert summary["default_chat_template_added"] is False  # data/tokenizer's chat template was used
    tuned = resolve_model_source(tmp_path / "o" / "mlflow_model", None)
    assert (Path(tuned.model) / "config.json").is_file()


def test_missing_config_names_every_place_looked(tmp_path):
    from maap_finetune.common.errors import UserError

    (tmp_path / "data" / "model").mkdir(parents=True)
    with pytest.raises(UserError, match="under data/model/ or under data/config/"):
        resolve_model_source(tmp_path, None)

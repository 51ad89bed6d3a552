"""The base model's parameter count, without weights: config.json (formula and meta device), safetensors
index and headers, MLflow folders, Azure ML models (the fakes) and the Hub (offline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from maap_finetune.capacity.parameters import (FORMULA_TYPES, decoder_parameters, meta_device_parameters,
                                               parameters_of_config, parameters_of_folder)

PHI3_MINI = json.loads((Path(__file__).resolve().parents[1] / "fixtures" / "phi3-mini-4k-config.json").read_text())
SMALL = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 96, "max_position_embeddings": 128,
         "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 1}


@pytest.mark.parametrize("model_type", sorted(FORMULA_TYPES))
@pytest.mark.parametrize("extra", [{}, {"tie_word_embeddings": True}, {"attention_bias": True, "mlp_bias": True},
                                   {"head_dim": 32}, {"num_key_value_heads": 4}])
def test_the_formula_counts_what_transformers_builds(model_type, extra):
    config = {**SMALL, "model_type": model_type, **extra}
    assert decoder_parameters(config) == meta_device_parameters(config)


def test_phi3_mini_has_3_8_billion_parameters_by_formula_and_meta_device():
    counted = parameters_of_config(PHI3_MINI)
    assert counted.parameters == meta_device_parameters(PHI3_MINI) == 3_821_079_552
    assert counted.how == "config.json (phi3 shapes)"


def test_other_architectures_are_built_on_the_meta_device():
    counted = parameters_of_config({"model_type": "gpt2", "vocab_size": 1000, "n_embd": 64, "n_layer": 2, "n_head": 4})
    # wte 1000x64 + wpe 1024x64 + 2 blocks (ln, attn 64x192+192, proj 64x64+64, ln, mlp 64x256+256, 256x64+64) + ln_f
    block = 2 * 64 + (64 * 192 + 192) + (64 * 64 + 64) + 2 * 64 + (64 * 256 + 256) + (256 * 64 + 64)
    assert counted.parameters == 1000 * 64 + 1024 * 64 + 2 * block + 2 * 64
    assert "meta device" in counted.how
    assert parameters_of_config({"vocab_size": 3}).parameters is None


def write_config_folder(folder: Path, config=PHI3_MINI) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_config_only_folder_is_enough(tmp_path):
    assert parameters_of_folder(write_config_folder(tmp_path / "phi3")).parameters == 3_821_079_552


def test_mlflow_folders_ours_and_the_catalogs(tmp_path):
    ours = tmp_path / "ours"
    write_config_folder(ours / "model")
    (ours / "MLmodel").write_text("flavors: {}\n")
    assert parameters_of_folder(ours).parameters == 3_821_079_552
    catalog = tmp_path / "catalog"  # hftransformersv2: weights under data/model, config apart under data/config
    (catalog / "data" / "model").mkdir(parents=True)
    write_config_folder(catalog / "data" / "config")
    assert parameters_of_folder(catalog).parameters == 3_821_079_552


def save_tiny_safetensors(path: Path, dtype="bfloat16") -> int:
    import torch
    from safetensors.torch import save_file

    kind = getattr(torch, dtype)
    tensors = {"a.weight": torch.zeros(3, 5, dtype=kind), "b.bias": torch.zeros(7, dtype=kind)}
    save_file(tensors, str(path))
    return 3 * 5 + 7


def test_without_a_config_the_safetensors_index_or_headers_count(tmp_path):
    headers = tmp_path / "headers"
    headers.mkdir()
    expected = save_tiny_safetensors(headers / "model-00001-of-00002.safetensors")
    expected += save_tiny_safetensors(headers / "model-00002-of-00002.safetensors")
    counted = parameters_of_folder(headers)
    assert counted.parameters == expected and "safetensors headers (2 files)" in counted.how

    indexed = tmp_path / "indexed"
    indexed.mkdir()
    shutil.copy(headers / "model-00001-of-00002.safetensors", indexed)
    (indexed / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 7_642_159_104}, "weight_map": {"a.weight": "model-00001-of-00002.safetensors"}}))
    counted = parameters_of_folder(indexed)
    assert counted.parameters == 3_821_079_552 and "BF16" in counted.how  # the dtype read from the shard's header

    (indexed / "model-00001-of-00002.safetensors").unlink()  # the index alone: bf16 assumed, and said
    counted = parameters_of_folder(indexed)
    assert counted.parameters == 3_821_079_552 and "bf16 assumed" in counted.how


def test_a_folder_with_nothing_to_count_says_why(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    counted = parameters_of_folder(tmp_path)
    assert counted.parameters is None and "no config.json or safetensors" in counted.how

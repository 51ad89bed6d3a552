"""The base model's parameter count, read without its weights.

    count = parameters_of_folder(Path("my-model"))       # config.json is enough (weights optional)
    count = parameters_of_config(json.loads(text))        # a config.json as a dict

Where it comes from, in order:
- `config.json`: Llama-family decoders (Phi-3, Llama, Mistral, Qwen2) by the closed formula of
  `decoder_parameters`, which needs no torch; any other architecture transformers knows by building it on the
  meta device (no memory) and counting. tests/capacity checks the formula against the meta-device count;
- without a config: `model.safetensors.index.json` (metadata.total_size / the dtype's bytes) or the headers
  of the `.safetensors` files (their tensors' shapes).
Folders: Hugging Face layout, our MLflow folders (`model/`) and the catalog's (`data/model`, `data/config`),
found by `maap_finetune.models.source.resolve_model_source`.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The decoders whose shapes `decoder_parameters` knows.
FORMULA_TYPES = frozenset({"phi3", "llama", "mistral", "qwen2"})
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "F32": 4, "F16": 2, "BF16": 2, "F64": 8, "float64": 8,
               "I8": 1, "U8": 1, "int8": 1, "uint8": 1, "I32": 4, "I64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class ParameterCount:
    parameters: int | None  # None: could not be told
    how: str  # where the figure came from, or why there is none (shown in the capacity table)


def decoder_parameters(config: dict[str, Any]) -> int:
    """Parameters of a Llama-family decoder (embeddings, attention, gated MLP, RMSNorms, output head)."""
    vocab, hidden = int(config["vocab_size"]), int(config["hidden_size"])
    layers, intermediate = int(config["num_hidden_layers"]), int(config["intermediate_size"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    model_type = config.get("model_type")
    q, kv, o = heads * head_dim, kv_heads * head_dim, heads * head_dim
    attention = hidden * (q + 2 * kv) + o * hidden
    if model_type == "qwen2":  # q/k/v biases always
        attention += q + 2 * kv
    elif model_type == "llama" and config.get("attention_bias"):  # q/k/v/o biases (mistral and phi3 have none)
        attention += q + 2 * kv + hidden
    mlp_bias = model_type == "llama" and config.get("mlp_bias")
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden if mlp_bias else 0)
    norms = 2 * hidden
    embeddings = vocab * hidden
    head = 0 if config.get("tie_word_embeddings", False) else vocab * hidden  # False: each type's default
    return embeddings + layers * (attention + mlp + norms) + hidden + head


def meta_device_parameters(config: dict[str, Any]) -> int:
    """Parameters of any architecture transformers implements, built on the meta device (allocates nothing)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {k: v for k, v in config.items() if k not in ("model_type", "auto_map")}
    model_config = AutoConfig.for_model(config["model_type"], **values)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    return sum(p.numel() for p in model.parameters())


def parameters_of_config(config: dict[str, Any]) -> ParameterCount:
    """From a config.json's content; `how` says which method counted."""
    config = {**config, **(config.get("text_config") or {})} if "vocab_size" not in config else config
    model_type = config.get("model_type")
    if model_type in FORMULA_TYPES:
        try:
            return ParameterCount(decoder_parameters(config), f"config.json ({model_type} shapes)")
        except (KeyError, TypeError, ValueError):
            pass
    if not model_type:
        return ParameterCount(None, "config.json names no model_type")
    try:
        return ParameterCount(meta_device_parameters(config), f"config.json ({model_type}, built on the meta device)")
    except Exception as err:  # an architecture this transformers cannot build: unknown, said why
        return ParameterCount(None, f"config.json: transformers cannot build {model_type} ({type(err).__name__})")


def _safetensors_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(length))


def parameters_of_safetensors(folder: Path) -> ParameterCount | None:
    """From `model.safetensors.index.json` (total_size / dtype bytes) or the files' headers; None without either."""
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        total = (json.loads(index.read_text(encoding="utf-8")).get("metadata") or {}).get("total_size")
        if total:
            dtypes = {entry.get("dtype") for f in files[:1] for name, entry in _safetensors_header(f).items()
                      if name != "__metadata__"}
            dtype = next(iter(dtypes)) if len(dtypes) == 1 else None
            size = DTYPE_BYTES.get(dtype, 2)
            said = dtype or "bf16 assumed: no shard to read the dtype from"
            return ParameterCount(int(total) // size, f"model.safetensors.index.json total_size ({said})")
    if files:
        count = 0
        for path in files:
            for name, entry in _safetensors_header(path).items():
                if name != "__metadata__":
                    count += math.prod(entry["shape"])
        return ParameterCount(count, f"safetensors headers ({len(files)} file{'s' if len(files) > 1 else ''})")
    return None


def parameters_of_folder(folder: Path) -> ParameterCount:
    """From a model folder: its config.json, else its safetensors index or headers."""
    from maap_finetune.common.errors import UserError
    from maap_finetune.models.source import resolve_model_source

    try:
        model_dir = Path(resolve_model_source(model_path=folder, model_name=None).model)
    except UserError:
        model_dir = Path(folder)
    config = model_dir / "config.json"
    if config.is_file():
        try:
            counted = parameters_of_config(json.loads(config.read_text(encoding="utf-8")))
        except ValueError as err:
            counted = ParameterCount(None, f"{config} is not JSON ({err})")
        if counted.parameters is not None:
            return counted
    from_weights = parameters_of_safetensors(model_dir)
    if from_weights is not None:
        return from_weights
    return ParameterCount(None, f"{folder}: no config.json or safetensors files to count parameters from")

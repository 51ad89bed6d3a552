"""The dtype a model's weights are stored in, read from its files (no weights load).

`config.json` says it (`dtype` since transformers 4.56, `torch_dtype` before); where it does not,
the safetensors headers do (the dtype most floating-point tensors have). Fine-Tune saves the merged
model in its base's dtype (`merged_dtype auto`).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

# Names in config.json / safetensors headers -> the precision names the component inputs use.
_CONFIG_NAMES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
_SAFETENSORS_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}


def stored_precision(model_dir: str | Path) -> tuple[str | None, str]:
    """(bf16 | fp16 | fp32 | None, where it was read) for a local Hugging Face model folder."""
    folder = Path(model_dir)
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    for key in ("dtype", "torch_dtype"):
        value = str(config.get(key) or "").removeprefix("torch.")
        if value in _CONFIG_NAMES:
            return _CONFIG_NAMES[value], f"config.json {key}"
    counts = Counter({_SAFETENSORS_NAMES[name]: n for name, n in safetensors_dtypes(folder).items()
                      if name in _SAFETENSORS_NAMES})
    if counts:
        return counts.most_common(1)[0][0], "safetensors headers"
    return None, "neither config.json nor safetensors headers name it"


def safetensors_dtypes(folder: str | Path) -> Counter[str]:
    """Tensors per safetensors dtype name (BF16, F32, ...) in the folder's *.safetensors files, from their headers."""
    counts: Counter[str] = Counter()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        counts.update(entry["dtype"] for name, entry in header.items() if name != "__metadata__")
    return counts

"""The fp32 graph check: the conversion itself proved on the model's first N layers, at any model size.

The export's precision (int4) has an error of its own, so its agreement with PyTorch says little about
whether the graph the builder wrote computes what the model computes. This check builds the same model,
cut to its first `layers` decoder layers, as fp32 with the same builder, and requires it to match
PyTorch running the same cut model in fp32 on the parity ids:

- greedy tokens identical for every parity prompt;
- teacher-forced top-1 identical at every scored position, and the reference token's NLL within
  `NLL_TOLERANCE` nats at every position (fp32 kernels differ in summation order only).

The cut copy keeps the embedding, the first `layers` layers, the final norm and the LM head: every kind of
node the full graph has, and every weight of those parts. Only its tensors are read (safetensors'
`safe_open`), so neither side ever holds the full model; the PyTorch side loads the cut copy, which is small.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Largest per-position difference of the reference token's NLL between the fp32 graph and PyTorch fp32.
# Measured on the tiny fine-tuned Phi-3 cut to one layer: below 1e-4 nats unbroken; one layer's down_proj
# scaled by 1% moved it by 5.2e-3, SiLU made tanh-gated by far more (tests/export_onnx/test_graph_check.py).
NLL_TOLERANCE = 1e-3
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
CONFIG_FILES = ("config.json", "generation_config.json")


def cut_model(model_dir: Path, layers: int, dest: Path) -> tuple[Path, int]:
    """Write the first `layers` decoder layers of `model_dir` (with embedding, final norm, LM head) to `dest`.

    Returns (dest, the number of layers kept: `layers`, or the model's own count when it has fewer).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    kept = min(layers, int(config["num_hidden_layers"]))
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"{model_dir}: no .safetensors weights to cut the fp32 graph check's model from")
    tensors = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                match = _LAYER.search(name)
                if match is None or int(match.group(1)) < kept:
                    tensors[name] = handle.get_tensor(name)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config["num_hidden_layers"] = kept
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:kept]
    (dest / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if (model_dir / "generation_config.json").is_file():
        (dest / "generation_config.json").write_text((model_dir / "generation_config.json").read_text(encoding="utf-8"),
                                                     encoding="utf-8")
    return dest, kept


def pytorch_reference(cut_dir: Path, tokenizer_dir: Path, reference: Mapping[str, Any]) -> dict[str, Any]:
    """The cut model's PyTorch fp32 reference on the same ids as Evaluate's reference."""
    import gc

    import torch

    from maap_finetune.evaluation import parity_reference
    from maap_finetune.evaluation.generation import load_model

    inputs = [{**g, **t} for g, t in zip(reference["generation"], reference["teacher_forced"])]
    loaded = load_model(str(cut_dir), str(tokenizer_dir), trust_remote_code=False, device="cpu")
    # One thread: a few layers' one-token steps are many small ops, which a second thread's hand-offs slow
    # down (measured on 2 cores: 32 decode steps of a 2-layer 0.1b cut in 3.8 s on 2 threads, 0.5 s on 1).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        entries, _ = parity_reference.compute(loaded, inputs, reference["max_new_tokens"], timed=False)
    finally:
        torch.set_num_threads(threads)
    del loaded
    gc.collect()
    return {"max_new_tokens": reference["max_new_tokens"], **entries}


def compare(cut_reference: Mapping[str, Any], onnx_dir: Path, decode) -> dict[str, Any]:
    """The fp32 graph check's result: the generation summary plus the teacher-forced comparison."""
    from maap_finetune.export import parity

    return summary(parity.compare(onnx_dir, cut_reference, timed=False), decode)


def summary(compared: Mapping[str, Any], decode) -> dict[str, Any]:
    """`parity.compare`'s result for the cut copy as the check's result (its texts decoded here)."""
    from maap_finetune.export import parity

    result = parity.generation_summary(parity.add_texts(compared["results"], decode))
    return {**result, "teacher_forced": parity.with_interval(compared["teacher_forced"]), "nll_tolerance": NLL_TOLERANCE}


def prepare_cut(hf_folder: Path, tokenizer_dir: Path, layers: int, dest: Path) -> tuple[Path, int]:
    """`cut_model` plus the tokenizer files (links), as the builder and PyTorch read a model folder."""
    from maap_finetune.export import builder

    cut_dir, kept = cut_model(hf_folder, layers, dest)
    for name in builder.TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and not (cut_dir / name).exists():
            (cut_dir / name).symlink_to((tokenizer_dir / name).resolve())
    return cut_dir, kept


def folders(scratch: Path) -> dict[str, Path]:
    return {"cut": scratch / "cut", "onnx": scratch / "cut_onnx", "cache": scratch / "cut_cache"}


def prepare(hf_folder: str, tokenizer_dir: str, reference: Mapping[str, Any], layers: int, execution_provider: str,
            scratch: str) -> dict:
    """Cut, build the cut copy as fp32, and run PyTorch fp32 on it; meant for the build child
    (builder.BuildChild), which imports torch, transformers and the builder once for this and the full
    build. Returns what `finish` compares: the kept layers and the cut reference."""
    from maap_finetune.export import builder

    where = folders(Path(scratch))
    cut_dir, kept = prepare_cut(Path(hf_folder), Path(tokenizer_dir), layers, where["cut"])
    # Its layers, embedding and head: far below the full build, so it builds in this process.
    builder.build(cut_dir, where["onnx"], "fp32", execution_provider, where["cache"], 32, None, in_child=False)
    return {"layers": kept, "reference": pytorch_reference(cut_dir, Path(tokenizer_dir), reference)}


def compare_cut(prepared: Mapping[str, Any], scratch: str) -> dict[str, Any]:
    """The cut copy's fp32 ONNX graph run on its PyTorch reference's ids (`parity.compare`, untimed); the
    scratch files are removed after. Picklable, for the checks' child (`checks.compare_cut_in_child`). On one
    thread: untimed, it runs beside the parent's imports, and ONNX Runtime's second thread, waiting for a
    busy core, slowed it threefold there (measured at 0.1b on 2 cores: 15.8 s against 5.2 s alone)."""
    import shutil

    from maap_finetune.export import parity

    try:
        return parity.compare(folders(Path(scratch))["onnx"], prepared["reference"], timed=False, threads=1)
    finally:
        for folder in folders(Path(scratch)).values():
            shutil.rmtree(folder, ignore_errors=True)


def finish(prepared: Mapping[str, Any], compared: Mapping[str, Any], hf_folder: Path, decode) -> dict[str, Any]:
    """The check's result from `prepare` and `compare_cut`."""
    total = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))["num_hidden_layers"]
    return {"layers": prepared["layers"], "model_layers": total, **summary(compared, decode)}


def run(hf_folder: Path, tokenizer_dir: Path, reference: Mapping[str, Any], layers: int, execution_provider: str,
        scratch: Path, decode) -> dict[str, Any]:
    """`prepare`, `compare_cut` and `finish`: the whole check in this process."""
    prepared = prepare(str(hf_folder), str(tokenizer_dir), reference, layers, execution_provider, str(scratch))
    return finish(prepared, compare_cut(prepared, str(scratch)), hf_folder, decode)


def failures(check: Mapping[str, Any]) -> list[str]:
    """One line per prompt whose greedy tokens differ, and one for the teacher-forced comparison."""
    where = f"fp32 graph check (first {check['layers']} of {check['model_layers']} layers)"
    lines = []
    for prompt in check["per_prompt"]:
        index = prompt["first_divergence"]
        if index is None:
            continue
        ref, got = prompt["reference_tokens"], prompt["onnx_tokens"]
        expected = ref[index] if index < len(ref) else "end of sequence"
        found = got[index] if index < len(got) else "end of sequence"
        lines.append(f"{where}: fp32 greedy tokens differ from PyTorch for test line {prompt['line']} at generated "
                     f"token {index}: PyTorch {expected}, ONNX Runtime GenAI {found}")
    tf = check["teacher_forced"]
    if tf.get("scored_tokens") and (tf["agreeing_tokens"] != tf["scored_tokens"]
                                    or tf["max_token_nll_delta"] > check["nll_tolerance"]):
        lines.append(f"{where}: teacher-forced top-1 differs from PyTorch at {tf['scored_tokens'] - tf['agreeing_tokens']}"
                     f" of {tf['scored_tokens']} positions, and the reference token's NLL by up to "
                     f"{tf['max_token_nll_delta']:.3g} nats (tolerance {check['nll_tolerance']:g})")
    return lines

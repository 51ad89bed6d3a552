"""The PyTorch side of Export ONNX's parity checks, computed once by Evaluate (the tuned model is loaded there).

Evaluate writes `evaluation/parity_reference.json`; Export ONNX runs the exported graph on the same token
ids and compares, without loading the full PyTorch model again. For the first `parity_prompts` test rows:

- greedy generation, one prompt at a time with no padding (so nothing but the engines differ): the prompt
  ids and the tokens transformers' `generate` picks, with time to first token and decode tokens/s;
- teacher-forced on the whole conversation: for every scored position (the reference answer's tokens, as
  Evaluate's loss scores them) the model's top-1 next token and the negative log-likelihood of the
  reference token. Full logits would be vocabulary-sized per position; these two are what the checks read.

rft rows are prompts without an answer, so their reference continuation is the tuned model's own greedy
tokens (those of the generation entry): teacher-forced on prompt + greedy tokens, the scored positions are
the greedy tokens, and the NLL is the tuned model's on its own choices (`teacher_forced_on` names which).

What makes the comparison like with like is recorded and checked by `check_reference`: sha256 of the weight
and tokenizer files (Evaluate scores the merged `mlflow_model`, the folder Export builds from), of the test
split, `max_seq_length`, `max_new_tokens`, the prompt count; and what the numbers were computed in
(dtype, device, machine), so a report can say where each timing came from.

The same functions give the reference of a cut model inside Export (`export/graph_check.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

REFERENCE_FILE = "parity_reference.json"
SCHEMA_VERSION = 1
# What the teacher-forced entries score: the test split's reference answers, or (rft) the greedy tokens.
ON_REFERENCE_ANSWERS = "reference answers"
ON_GREEDY_TOKENS = "greedy tokens"


@dataclass
class Timing:
    ttft_s: list[float] = field(default_factory=list)
    decode_tokens: int = 0
    decode_s: float = 0.0

    def summary(self) -> dict[str, float | None]:
        return {
            "time_to_first_token_s": sum(self.ttft_s) / len(self.ttft_s) if self.ttft_s else None,
            "decode_tokens_per_s": self.decode_tokens / self.decode_s if self.decode_s > 0 else None,
        }


def folder_sha256(folder: str | Path) -> str:
    """sha256 over every file of `folder` (relative name and bytes, in name order; links followed)."""
    digest = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def machine(device: str) -> dict[str, Any]:
    """Where a timing was measured: host, device (with the GPU's name), CPUs visible."""
    described = device
    if device.startswith("cuda"):
        import torch

        described = f"cuda ({torch.cuda.get_device_name(0)})"
    return {"host": platform.node(), "device": described, "cpus": os.cpu_count(),
            "platform": f"{platform.machine()} {platform.system()}"}


def parity_inputs(tokenizer, examples, max_new_tokens: int, max_seq_length: int) -> list[dict[str, Any]]:
    """Token ids both engines see, per example: the generation prompt and the teacher-forced sequence; an rft
    row has no answer, so its sequence is None: `compute` makes it prompt + the greedy tokens."""
    from maap_finetune.evaluation.generation import generation_prompt, loss_sequence, prompt_text

    rows = []
    for example in examples:
        prompt_ids = generation_prompt(tokenizer, example, max(1, max_seq_length - max_new_tokens))[0]
        if example.row is not None:  # rft; the prompt leaves max_new_tokens of room within max_seq_length
            ids, start = None, len(prompt_ids)
        else:
            ids, start, _ = loss_sequence(tokenizer, example, max_seq_length)
        rows.append({"line": example.line, "prompt": prompt_text(example, tokenizer), "prompt_ids": prompt_ids,
                     "ids": ids, "start": start})
    return rows


def torch_greedy(loaded, prompt_ids: list[int], max_new_tokens: int, timing: Timing | None) -> list[int]:
    """Greedy tokens from transformers `generate`; with `timing`, the first token is timed apart from the rest."""
    import torch

    from maap_finetune.evaluation.generation import _greedy_config

    config = _greedy_config(loaded.model, loaded.tokenizer, max_new_tokens)
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
    if timing is None:
        with torch.no_grad():
            return loaded.model.generate(input_ids=input_ids, generation_config=config)[0, len(prompt_ids):].tolist()
    first = _greedy_config(loaded.model, loaded.tokenizer, 1)
    with torch.no_grad():
        start = time.perf_counter()
        loaded.model.generate(input_ids=input_ids, generation_config=first)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        out = loaded.model.generate(input_ids=input_ids, generation_config=config)[0, len(prompt_ids):].tolist()
        total = time.perf_counter() - start
    timing.ttft_s.append(ttft)
    if len(out) > 1:
        timing.decode_tokens += len(out) - 1
        timing.decode_s += max(total - ttft, 1e-9)
    return out


def teacher_forced(loaded, ids: list[int], start: int) -> tuple[list[int], list[float]]:
    """(top-1 next token, NLL of the actual next token) at each position predicting ids[start:]."""
    import torch

    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0, start - 1 : len(ids) - 1]
        logits = logits.float()
        targets = torch.tensor(ids[start:], device=logits.device)
        nll = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
        return logits.argmax(-1).tolist(), [float(x) for x in nll.double().cpu()]


def predictions(loaded, prompt_ids: list[int], tokens: list[int]) -> list[int]:
    """Top-1 next token after `prompt_ids` and after each of `tokens` (len(tokens) + 1 ids), teacher-forced: one
    forward over both (the fp32 graph check's PyTorch side, `export/graph_check.py`)."""
    import torch

    ids = [*prompt_ids, *tokens]
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0, len(prompt_ids) - 1:]
    return logits.argmax(-1).tolist()


def compute(loaded, inputs: Sequence[Mapping[str, Any]], max_new_tokens: int) -> tuple[dict[str, Any], Timing]:
    """The reference's generation and teacher-forced entries for `inputs` (see `parity_inputs`), greedy
    generation timed. A row whose "ids" is None (rft) is teacher-forced on its prompt followed by the greedy
    tokens generated here."""
    if inputs:  # one untimed run first: one-time costs (allocations, kernel selection) are no one's speed
        torch_greedy(loaded, list(inputs[0]["prompt_ids"]), 2, Timing())
    timing, generation, forced = Timing(), [], []
    for row in inputs:
        tokens = torch_greedy(loaded, list(row["prompt_ids"]), max_new_tokens, timing)
        generation.append({"line": row["line"], "prompt": row["prompt"], "prompt_ids": list(row["prompt_ids"]),
                           "tokens": tokens})
        ids = list(row["ids"]) if row["ids"] is not None else [*row["prompt_ids"], *tokens]
        forced.append(teacher_forced_entry(loaded, row["line"], ids, row["start"]))
    return {"generation": generation, "teacher_forced": forced}, timing


def teacher_forced_entry(loaded, line: int, ids: list[int], start: int) -> dict[str, Any]:
    entry = {"line": line, "ids": ids, "start": start, "top1": [], "nll": []}
    if start < len(ids):
        entry["top1"], entry["nll"] = teacher_forced(loaded, ids, start)
    return entry


def weights_dtype(model_dir: str | Path) -> str | None:
    """The floating dtype the weight files store (from the safetensors headers), or None when unknown."""
    import struct

    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    found: set[str] = set()
    for path in sorted(Path(model_dir).glob("*.safetensors")):
        with open(path, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(size))
        found |= {names[v["dtype"]] for k, v in header.items() if k != "__metadata__" and v.get("dtype") in names}
    return found.pop() if len(found) == 1 else ("mixed" if found else None)


def build_reference(loaded, examples, model_dir: str | Path, tokenizer_dir: str | Path, test_split: str | Path,
                    max_new_tokens: int, max_seq_length: int) -> dict[str, Any]:
    """The parity reference of the loaded tuned model (see the module docstring)."""
    inputs = parity_inputs(loaded.tokenizer, examples, max_new_tokens, max_seq_length)
    entries, timing = compute(loaded, inputs, max_new_tokens)
    dtype = str(next(loaded.model.parameters()).dtype).removeprefix("torch.")
    device = str(loaded.device)
    return {
        "schema_version": SCHEMA_VERSION,
        "model_sha256": folder_sha256(model_dir),
        "tokenizer_sha256": folder_sha256(tokenizer_dir),
        "test_split_sha256": file_sha256(test_split),
        "prompts": len(inputs),
        "max_new_tokens": max_new_tokens,
        "max_seq_length": max_seq_length,
        "dtype": dtype,
        "device": device,
        "weights_dtype": weights_dtype(model_dir),
        "engine": f"transformers generate, {dtype} on {device}",
        "machine": machine(device),
        "timing": timing.summary(),
        "teacher_forced_on": ON_GREEDY_TOKENS if any(row["ids"] is None for row in inputs) else ON_REFERENCE_ANSWERS,
        **entries,
    }


def write_reference(folder: Path, reference: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REFERENCE_FILE
    path.write_text(json.dumps(reference) + "\n", encoding="utf-8")
    return path


def read_reference(folder: Path) -> dict[str, Any]:
    path = folder / REFERENCE_FILE
    if not path.is_file():
        raise UserError(
            f"{path} is missing: Evaluate writes the PyTorch side of the parity checks there when its parity_prompts "
            "is above 0 (the pipeline sets it whenever export_onnx is on); run Evaluate with parity_prompts >= 1, or "
            "give Export ONNX that Evaluate's evaluation output"
        )
    try:
        reference = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise UserError(f"{path}: invalid JSON ({err}); run Evaluate again") from None
    if not isinstance(reference, dict) or reference.get("schema_version") != SCHEMA_VERSION:
        raise UserError(f"{path}: schema_version {reference.get('schema_version') if isinstance(reference, dict) else None}"
                        f" is not {SCHEMA_VERSION}; run Evaluate of this version again")
    return reference


def check_reference(reference: Mapping[str, Any], path: Path, expected: Mapping[str, Any]) -> None:
    """Refuse a reference computed for other weights, tokenizer, test split or settings, naming each difference.

    `expected`: the same keys as the reference (model_sha256, tokenizer_sha256, test_split_sha256, prompts,
    max_new_tokens, max_seq_length), as this step sees them.
    """
    labels = {
        "model_sha256": "the model weights (sha256 of the mlflow_model's model files)",
        "tokenizer_sha256": "the tokenizer (sha256 of its files)",
        "test_split_sha256": "the test split (sha256 of test.jsonl)",
        "prompts": "parity_prompts",
        "max_new_tokens": "parity_max_new_tokens",
        "max_seq_length": "max_seq_length",
    }
    differences = [f"{label}: reference {reference.get(key)!r}, this step {expected[key]!r}"
                   for key, label in labels.items() if key in expected and reference.get(key) != expected[key]]
    if differences:
        raise UserError(
            f"{path} was computed for another model or other settings than this export, so the parity checks would "
            "not compare like with like:\n  - " + "\n  - ".join(differences) + "\n  Give Export ONNX the "
            "mlflow_model, test_data and evaluation of the same pipeline run, with the same parity_prompts, "
            "parity_max_new_tokens and max_seq_length as Evaluate (the pipeline wires them from one input each)"
        )

"""General ability: what fine-tuning cost outside the task, measured with no data to download.

Drift on general text. The base model writes its own reference: greedy continuations, at most
`general_max_new_tokens` long, of the project's general prompts (data/general_prompts.jsonl: facts,
arithmetic, code, instructions, other languages), each rendered as a user turn with the base tokenizer's
chat template (plain text when it has none). Both models then score the same token sequences:
- `drift_loss`: mean cross-entropy per continuation token. The base's is its own loss on what it wrote;
  the tuned model's rises as it moves away from the base (a KL-like figure);
- `drift_relative`: (tuned - base) / base, what `max_general_drift` limits;
- `agreement`: the share of the base's continuation tokens that are the tuned model's top-1 prediction
  at the same position, teacher-forced.
The base's own loss comes from the logits of its generation, so the base runs no second pass.
`general_data`, a text or chat file of the user's, adds PEFT-style cross-entropy on it before and after.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError

PROMPTS_FILE = "general_prompts.jsonl"


def prompts_path(component_dir: Path) -> Path:
    """The prompts file: beside the entry script in a component snapshot (additional_includes), else the repo's."""
    for candidate in (component_dir / PROMPTS_FILE, component_dir.parents[1] / "data" / PROMPTS_FILE):
        if candidate.is_file():
            return candidate
    raise UserError(f"{PROMPTS_FILE} is missing from the component snapshot ({component_dir}); it ships through "
                    "evaluate's additional_includes")


def read_prompts(path: Path) -> list[str]:
    prompts = []
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if raw.strip():
            row = json.loads(raw)
            if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise UserError(f"{path}, line {number}: field 'prompt' must be a non-empty string")
            prompts.append(row["prompt"])
    return prompts


@dataclass
class DriftReference:
    """The base model's side: the token sequences both models score and where each continuation starts."""

    sequences: list[list[int]]
    starts: list[int]
    continuations: list[str]
    base_scores: dict[str, float]


def batch_rows(token_budget: int, longest: int) -> int:
    """Rows per batch within the token budget of Evaluate's loss batches (eval_batch_size x max_seq_length): the
    general prompts are short, so they run many to a batch, which is what keeps the step's added time small."""
    return max(1, token_budget // max(1, longest))


def base_reference(loaded, prompts: Sequence[str], max_new_tokens: int, token_budget: int) -> DriftReference:
    """Greedy continuations of `prompts` by the loaded (base) model."""
    from maap_finetune.evaluation.generation import generate_ids, render_user_prompt

    prompt_ids = [render_user_prompt(loaded.tokenizer, prompt) for prompt in prompts]
    longest = max(len(ids) for ids in prompt_ids) + max_new_tokens
    logprobs: list[list[float]] = []
    continuations = generate_ids(loaded, prompt_ids, max_new_tokens, batch_rows(token_budget, longest), logprobs)
    tokens = sum(len(c) for c in continuations)
    return DriftReference(
        sequences=[p + c for p, c in zip(prompt_ids, continuations)],
        starts=[len(p) for p in prompt_ids],
        continuations=[loaded.tokenizer.decode(c, skip_special_tokens=True).strip() for c in continuations],
        base_scores={"drift_loss": -sum(map(sum, logprobs)) / tokens if tokens else math.nan,
                     "agreement": 1.0 if tokens else math.nan,  # greedy: every token is the base's top-1
                     "scored_tokens": tokens},
    )


def score(loaded, reference: DriftReference, token_budget: int) -> dict[str, float]:
    """This model's mean loss per continuation token and top-1 agreement with the continuations."""
    import torch

    nll, agree, tokens = 0.0, 0, 0
    batch_size = batch_rows(token_budget, max(len(ids) for ids in reference.sequences))
    order = sorted(range(len(reference.sequences)), key=lambda i: len(reference.sequences[i]))
    order = [i for i in order if reference.starts[i] < len(reference.sequences[i])]  # empty continuations
    for offset in range(0, len(order), batch_size):
        batch = order[offset: offset + batch_size]
        width = max(len(reference.sequences[i]) for i in batch)
        input_ids = torch.full((len(batch), width), loaded.tokenizer.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = reference.sequences[i]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        with torch.no_grad():
            logits = loaded.model(input_ids=input_ids.to(loaded.device),
                                  attention_mask=attention.to(loaded.device)).logits
            for row, i in enumerate(batch):
                ids, start = reference.sequences[i], reference.starts[i]
                predicted = logits[row, start - 1: len(ids) - 1].float()
                target = torch.tensor(ids[start:], device=predicted.device)
                nll += float(torch.nn.functional.cross_entropy(predicted, target, reduction="sum"))
                agree += int((predicted.argmax(dim=-1) == target).sum())
                tokens += len(target)
            del logits
    return {"drift_loss": nll / tokens if tokens else math.nan,
            "agreement": agree / tokens if tokens else math.nan,
            "scored_tokens": tokens}


def drift_summary(base: dict[str, float], tuned: dict[str, float]) -> dict[str, Any]:
    base_loss, tuned_loss = base["drift_loss"], tuned["drift_loss"]
    finite = math.isfinite(base_loss) and math.isfinite(tuned_loss) and base_loss > 0
    return {
        "base_drift_loss": base_loss,
        "finetuned_drift_loss": tuned_loss,
        "drift_absolute": tuned_loss - base_loss if finite else math.nan,
        "drift_relative": (tuned_loss - base_loss) / base_loss if finite else math.nan,
        "agreement": tuned["agreement"],
        "scored_tokens": tuned["scored_tokens"],
    }


def general_data_format(path: Path) -> str:
    """'text' or 'messages' for a user's general_data file, checked before any model loads."""
    fix = ("give a .jsonl file whose rows have a 'text' string (plain text) or a 'messages' list ending with an "
           "assistant turn (chat)")
    if path.suffix.lower() != ".jsonl":
        raise UserError(f"general_data {path}: expected a .jsonl file, got {path.suffix or 'no extension'!r}; {fix}")
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except ValueError as err:
                raise UserError(f"general_data {path}, line {number}: invalid JSON ({err}); {fix}") from None
            if isinstance(row, dict) and isinstance(row.get("text"), str):
                return "text"
            if isinstance(row, dict) and isinstance(row.get("messages"), list):
                return "messages"
            raise UserError(f"general_data {path}, line {number}: neither a 'text' nor a 'messages' field; {fix}")
    raise UserError(f"general_data {path}: the file has no rows; {fix}")

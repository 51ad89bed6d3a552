"""Evaluate on preference pairs (Data Prep task preference): how each model ranks chosen against rejected.

Per model, on the test pairs, the summed log-probability of each answer given its prompt (the
answer's tokens only, tokenized as Fine-Tune's DPO does, cut at max_seq_length):
- `preference_accuracy`: share of pairs with log p(chosen) > log p(rejected);
- `preference_margin`: mean of log p(chosen) - log p(rejected), in nats;
- `chosen_logp`, `rejected_logp`: their means.
DPO's implicit reward is r(y) = beta * (log p_tuned(y) - log p_base(y)) with the base as reference;
`implicit_reward` reports how often it ranks chosen above rejected and its mean margin (beta from
the fine-tuned model's metadata). Loss, perplexity and sample generations use the chosen answer as
the reference, like any chat row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maap_finetune.common.errors import UserError
from maap_finetune.evaluation.metrics import PAIR_METRICS

PREFERENCE_METRICS = PAIR_METRICS["preference"]


def read_pairs(path: str | Path, limit: int) -> list[dict[str, Any]]:
    """The first `limit` pairs of a prepared preference split."""
    path = Path(path)
    pairs = []
    with open(path, encoding="utf-8") as handle:
        for number, raw in enumerate(handle, start=1):
            if len(pairs) >= limit:
                break
            if not raw.strip():
                continue
            row = json.loads(raw)
            if not all(isinstance(row.get(k), list) and row[k] for k in ("prompt", "chosen", "rejected")):
                raise UserError(f"{path}, line {number}: a preference row needs non-empty prompt, chosen and "
                                "rejected message lists")
            pairs.append({**row, "line": number})
    return pairs


def pair_logps(loaded, pairs: Sequence[dict], max_seq_length: int, batch_size: int) -> list[tuple[float, float]]:
    """(log p(chosen | prompt), log p(rejected | prompt)) per pair, summed over the answer's tokens."""
    import torch

    from maap_finetune.training.preference import tokenize_pair

    sequences = []  # (ids, first answer position)
    for pair in pairs:
        prompt, chosen, rejected = tokenize_pair(loaded.tokenizer, pair)
        for answer in (chosen, rejected):
            ids = (prompt + answer)[:max_seq_length]
            sequences.append((ids, max(1, min(len(prompt), len(ids)))))
    sums = [0.0] * len(sequences)
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]))
    pad_id = loaded.tokenizer.pad_token_id
    for offset in range(0, len(order), batch_size):
        batch = order[offset: offset + batch_size]
        width = max(len(sequences[i][0]) for i in batch)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):
            ids = sequences[i][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        with torch.no_grad():
            logits = loaded.model(input_ids=input_ids.to(loaded.device),
                                  attention_mask=attention.to(loaded.device)).logits
            for row, i in enumerate(batch):
                ids, start = sequences[i]
                if start >= len(ids):
                    continue  # the prompt filled max_seq_length: nothing of the answer to score
                logps = torch.log_softmax(logits[row, start - 1: len(ids) - 1].float(), dim=-1)
                target = torch.tensor(ids[start:], device=logps.device)
                sums[i] = float(logps.gather(1, target[:, None]).sum())
            del logits
    return [(sums[2 * k], sums[2 * k + 1]) for k in range(len(pairs))]


def preference_metrics(logps: Sequence[tuple[float, float]]) -> dict[str, float]:
    if not logps:
        return {name: math.nan for name in PREFERENCE_METRICS}
    n = len(logps)
    return {
        "preference_accuracy": sum(c > r for c, r in logps) / n,
        "preference_margin": sum(c - r for c, r in logps) / n,
        "chosen_logp": sum(c for c, _ in logps) / n,
        "rejected_logp": sum(r for _, r in logps) / n,
    }


def implicit_reward(base: Sequence[tuple[float, float]], tuned: Sequence[tuple[float, float]],
                    beta: float | None) -> dict[str, Any]:
    """DPO's implicit reward of the tuned model with the base as reference: accuracy and mean margin."""
    scale = beta if beta is not None else 1.0
    margins = [scale * ((tc - bc) - (tr - br)) for (bc, br), (tc, tr) in zip(base, tuned)]
    n = len(margins)
    return {
        "beta": beta,
        "note": None if beta is not None else "beta unknown (not a DPO model): margins are per unit of beta",
        "accuracy": sum(m > 0 for m in margins) / n if n else math.nan,
        "mean_margin": sum(margins) / n if n else math.nan,
        "pairs": n,
    }

"""Evaluate on preference pairs (Data Prep task preference): how each model ranks chosen against rejected.

Per model, on the test pairs, the summed log-probability of each answer given its prompt (the
answer's tokens only, tokenized as Fine-Tune's DPO does, cut at max_seq_length):
- `preference_accuracy`: share of pairs with log p(chosen) > log p(rejected);
- `preference_accuracy_normalized`: the same on the mean log-probability per answer token;
- `preference_margin`: mean of log p(chosen) - log p(rejected), in nats;
- `chosen_logp`, `rejected_logp`: their means.
DPO's implicit reward is r(y) = beta * (log p_tuned(y) - log p_base(y)) with the base as reference;
`implicit_reward_accuracy` is how often it ranks chosen above rejected, a tie counting half, so the
base (its own reference: every margin 0) scores 0.5. It is the gate's default for preference data:
a summed log-probability falls with every token, so when the chosen answers are the longer ones
`preference_accuracy` stays near 0 however well the model learned (and near 1 when they are the
shorter), while the implicit reward compares each answer with itself under the base, and the length
cancels. Loss, perplexity and sample generations use the chosen answer as the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from maap_finetune.common.errors import UserError
from maap_finetune.evaluation.metrics import PAIR_METRICS

PREFERENCE_METRICS = PAIR_METRICS["preference"]


class PairScore(NamedTuple):
    """Summed log-probabilities of a pair's answers given the prompt, and how many tokens each scored."""

    chosen: float
    rejected: float
    chosen_tokens: int
    rejected_tokens: int


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


def pair_logps(loaded, pairs: Sequence[dict], max_seq_length: int, batch_size: int) -> list[PairScore]:
    """log p(chosen | prompt) and log p(rejected | prompt) per pair, summed over the answer's tokens."""
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
    scored = [max(0, len(ids) - start) for ids, start in sequences]
    return [PairScore(sums[2 * k], sums[2 * k + 1], scored[2 * k], scored[2 * k + 1]) for k in range(len(pairs))]


def preference_metrics(scores: Sequence[PairScore]) -> dict[str, float]:
    """The ranking metrics of one model; `implicit_reward_accuracy` needs both models (`implicit_reward`)."""
    if not scores:
        return {name: math.nan for name in PREFERENCE_METRICS if name != "implicit_reward_accuracy"}
    n = len(scores)
    return {
        "preference_accuracy": sum(s.chosen > s.rejected for s in scores) / n,
        "preference_accuracy_normalized": sum(
            _per_token(s.chosen, s.chosen_tokens) > _per_token(s.rejected, s.rejected_tokens) for s in scores) / n,
        "preference_margin": sum(s.chosen - s.rejected for s in scores) / n,
        "chosen_logp": sum(s.chosen for s in scores) / n,
        "rejected_logp": sum(s.rejected for s in scores) / n,
    }


def implicit_reward(base: Sequence[PairScore], tuned: Sequence[PairScore], beta: float | None) -> dict[str, Any]:
    """DPO's implicit reward of the tuned model with the base as reference: accuracy (a tie counts half, as a
    coin would break it) and mean margin. `implicit_reward(base, base, ...)` is 0.5 by construction."""
    scale = beta if beta is not None else 1.0
    margins = [scale * ((t.chosen - b.chosen) - (t.rejected - b.rejected)) for b, t in zip(base, tuned)]
    n = len(margins)
    return {
        "beta": beta,
        "note": None if beta is not None else "beta unknown (not a DPO model): margins are per unit of beta",
        "accuracy": sum(1.0 if m > 0 else 0.5 if m == 0 else 0.0 for m in margins) / n if n else math.nan,
        "mean_margin": sum(margins) / n if n else math.nan,
        "pairs": n,
    }


def _per_token(logp: float, tokens: int) -> float:
    return logp / tokens if tokens else -math.inf

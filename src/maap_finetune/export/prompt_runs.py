"""Runs of the exported graph for the parity checks: one Generator per parity prompt, teacher-forced.

`PromptRuns` runs a prompt once on an empty KV cache and each continuation over its cache: the greedy
agreement (`onnx_predictions`: the export's top-1 after the prompt and after each of PyTorch's greedy tokens)
and the prompt's test row's teacher-forced sequence (`sequence_logits`) share the prompt's run.
`TeacherForcedTally` scores one sequence's logits at a time against PyTorch's top-1 and NLL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


class PromptRuns:
    """One Generator for one parity prompt: the prompt run once on an empty KV cache (`prompt_logits`), then
    each continuation (`after`) over its cache, rewound to the prompt's end before the next
    (`Generator.rewind_to`). The prompt's rows and those of a one-run continuation are those of the whole
    sequence run on an empty cache (measured bit-identical, int4 and fp32; the greedy tokens' two runs round
    differently in the last bits, 6e-9 nats in a mean loss), so the greedy agreement and the teacher-forced loss
    pay the prompt once."""

    def __init__(self, model, prompt_ids: list[int], room: int):
        import numpy as np
        import onnxruntime_genai as og

        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt_ids) + room, do_sample=False)
        self.generator = og.Generator(model, params)
        self.generator.append_tokens(list(prompt_ids))
        self.prompt_logits = np.asarray(self.generator.get_output("logits"))[0].astype(np.float32)
        if len(self.prompt_logits) != len(prompt_ids):
            raise RuntimeError(f"the exported model gave {len(self.prompt_logits)} rows of logits for a prompt of "
                               f"{len(prompt_ids)} ids, not one row per id")
        self.prompt_length, self.continued = len(prompt_ids), False

    def after(self, chunks: Sequence[Sequence[int]]):
        """Logits after each id of `chunks` appended in turn (one run of the graph per chunk) to the prompt."""
        import numpy as np

        if self.continued:
            self.generator.rewind_to(self.prompt_length)
        self.continued = True
        rows = [self.prompt_logits[:0]]
        for chunk in chunks:
            if not chunk:
                continue
            self.generator.append_tokens(list(chunk))
            logits = np.asarray(self.generator.get_output("logits"))[0].astype(np.float32)
            if len(logits) != len(chunk):
                raise RuntimeError(f"the exported model gave {len(logits)} rows of logits for {len(chunk)} appended ids")
            rows.append(logits)
        return np.concatenate(rows)


def onnx_predictions(runs: PromptRuns, tokens: list[int]):
    """(the export's top-1 after the prompt and after each of `tokens`: len(tokens) + 1 ids, the logits after
    each of `tokens`), teacher-forced: the first token alone over the prompt's cache (the decode path
    generation takes), the rest in one run over it."""
    after = runs.after([tokens[:1], tokens[1:]])
    return [int(runs.prompt_logits[-1].argmax()), *(int(i) for i in after.argmax(-1))], after


def onnx_logits(model, ids: list[int]):
    """Logits at every position of `ids`: the whole sequence in one run of the exported graph (empty KV cache)."""
    return PromptRuns(model, ids, 0).prompt_logits


def sequence_logits(runs: PromptRuns, prompt_ids: list[int], tokens: list[int], after_tokens, ids: list[int]):
    """Logits at every position of the teacher-forced sequence `ids` from the prompt's runs, when `ids` starts
    with the prompt: the prompt's own rows, then those after the greedy `tokens` where `ids` goes on with them
    (rft: prompt + greedy tokens), else a continuation over the prompt's cache. None when it does not."""
    import numpy as np

    if ids[:len(prompt_ids)] != list(prompt_ids):
        return None
    rest = ids[len(prompt_ids):]
    rows = after_tokens[:len(rest)] if rest == tokens[:len(rest)] else runs.after([rest])
    return np.concatenate([runs.prompt_logits, rows])


class TeacherForcedTally:
    """The teacher-forced comparison, one entry at a time (`add`), so that only one sequence's logits (up to
    max_seq_length x vocabulary floats) are held at once."""

    def __init__(self):
        self.agree = self.scored = 0
        self.nll = {"pytorch": 0.0, "onnx": 0.0}
        self.max_nll_delta = 0.0

    def add(self, entry: Mapping[str, Any], logits) -> None:
        """`entry`'s scored positions, from the export's `logits` at every position of its ids."""
        import numpy as np

        ids, start = entry["ids"], entry["start"]
        rows = logits[start - 1 : len(ids) - 1].astype(np.float64)  # i predicts i + 1
        targets = np.array(ids[start:])
        log_z = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        got_nll = log_z - rows[np.arange(len(targets)), targets]
        self.agree += int((rows.argmax(-1) == np.array(entry["top1"])).sum())
        self.scored += len(targets)
        self.nll["pytorch"] += float(np.sum(entry["nll"]))
        self.nll["onnx"] += float(got_nll.sum())
        self.max_nll_delta = max(self.max_nll_delta, float(np.abs(got_nll - np.array(entry["nll"])).max()))

    def summary(self) -> dict[str, Any]:
        if not self.scored:
            return {"scored_tokens": 0, "top1_agreement": None, "loss_pytorch": None, "loss_onnx": None,
                    "loss_delta": None}
        loss_pt, loss_ox = self.nll["pytorch"] / self.scored, self.nll["onnx"] / self.scored
        return {
            "scored_tokens": self.scored,
            "agreeing_tokens": self.agree,
            "top1_agreement": self.agree / self.scored,
            "loss_pytorch": loss_pt,
            "loss_onnx": loss_ox,
            "loss_delta": loss_ox - loss_pt,
            "max_token_nll_delta": self.max_nll_delta,
            "perplexity_pytorch": math.exp(min(loss_pt, 700)),
            "perplexity_onnx": math.exp(min(loss_ox, 700)),
        }


def scored(entry: Mapping[str, Any]) -> bool:
    return entry["start"] < len(entry["ids"])

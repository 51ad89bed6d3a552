"""ONNX Runtime against the PyTorch reference Evaluate computed: greedy tokens, teacher-forced top-1 and loss, speed.

The reference (`maap_finetune.evaluation.parity_reference`) holds, per parity prompt, the prompt ids and
PyTorch's greedy tokens, and per teacher-forced position PyTorch's top-1 token and the reference token's NLL.
This side runs the exported model on the very same ids:

- greedy generation, one prompt at a time (no padding, so nothing but the engines differ), with an
  `onnxruntime_genai.Generator`: the tokens, the first position where they differ from PyTorch's, time to
  first token and decode tokens/s;
- teacher-forced: the same loaded model, fed the whole sequence at once by a Generator (an empty KV
  cache), its logits at every position (`Generator.get_output("logits")`): its top-1 and reference-token
  NLL at every scored position beside PyTorch's: top-1 agreement (with its 95% Wilson interval), the
  loss of each and the largest per-position NLL difference.

One `onnxruntime_genai.Model` serves both (`load`): the model is read and its session made once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maap_finetune.evaluation.parity_reference import Timing


@dataclass
class PromptResult:
    line: int  # line of the test split
    prompt: str
    reference_tokens: list[int]  # PyTorch greedy
    onnx_tokens: list[int]
    first_divergence: int | None  # index into the generated tokens; None when identical
    reference_text: str = ""
    onnx_text: str = ""

    @property
    def matching_prefix(self) -> int:
        return len(self.reference_tokens) if self.first_divergence is None else self.first_divergence


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def onnx_greedy(model, prompt_ids: list[int], max_new_tokens: int, timing: Timing) -> list[int]:
    """Greedy tokens from an onnxruntime_genai Generator, stopping at the model's EOS tokens."""
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt_ids) + max_new_tokens, do_sample=False)
    generator = og.Generator(model, params)
    out: list[int] = []
    start = time.perf_counter()
    generator.append_tokens(prompt_ids)
    first_at = None
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
        if first_at is None:
            first_at = time.perf_counter()
    end = time.perf_counter()
    if first_at is not None:
        timing.ttft_s.append(first_at - start)
        if len(out) > 1:
            timing.decode_tokens += len(out) - 1
            timing.decode_s += max(end - first_at, 1e-9)
    return out


def load(onnx_dir: Path, threads: int | None = None):
    """The exported folder as onnxruntime-genai runs it (its genai_config's provider and session options),
    on `threads` intra-op threads when given."""
    import onnxruntime_genai as og

    config = og.Config(str(onnx_dir))
    if threads is not None:
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    return og.Model(config)


def compare_generation(model, reference: Mapping[str, Any], timed: bool = True):
    """(per-prompt results, ONNX Runtime GenAI timing): greedy tokens of the export against the reference's.
    The texts are left empty (`add_texts` fills them where the tokenizer is loaded)."""
    max_new_tokens = reference["max_new_tokens"]
    prompts = reference["generation"]
    if prompts and timed:  # one untimed run first: one-time costs (allocations, kernel selection) are no one's speed
        onnx_greedy(model, prompts[0]["prompt_ids"], 2, Timing())
    timing, results = Timing(), []
    for prompt in prompts:
        got = onnx_greedy(model, prompt["prompt_ids"], max_new_tokens, timing)
        expected = list(prompt["tokens"])
        results.append(PromptResult(line=prompt["line"], prompt=prompt["prompt"], reference_tokens=expected,
                                    onnx_tokens=got, first_divergence=first_divergence(expected, got)))
    return results, timing


def add_texts(results: Sequence[PromptResult], decode: Callable[[list[int]], str]) -> Sequence[PromptResult]:
    for result in results:
        result.reference_text, result.onnx_text = decode(result.reference_tokens), decode(result.onnx_tokens)
    return results


def onnx_logits(model, ids: list[int]):
    """Logits at every position of `ids`: the whole sequence in one run of the exported graph (empty KV cache)."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(ids), do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(ids)
    logits = np.asarray(generator.get_output("logits"))
    if logits.shape[:2] != (1, len(ids)):
        raise RuntimeError(f"the exported model gave logits of shape {logits.shape} for {len(ids)} ids, not one row per id")
    return logits[0].astype(np.float32)


def compare_teacher_forced(model, reference: Mapping[str, Any]) -> dict[str, Any]:
    """Top-1 agreement and reference-token loss of the export against the reference, teacher-forced
    (`with_interval` adds the agreement's interval)."""
    import numpy as np

    agree = scored = 0
    nll = {"pytorch": 0.0, "onnx": 0.0}
    max_nll_delta = 0.0
    for entry in reference["teacher_forced"]:
        ids, start = entry["ids"], entry["start"]
        if start >= len(ids):
            continue
        rows = onnx_logits(model, ids)[start - 1 : len(ids) - 1].astype(np.float64)  # i predicts i + 1
        targets = np.array(ids[start:])
        log_z = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        got_nll = log_z - rows[np.arange(len(targets)), targets]
        agree += int((rows.argmax(-1) == np.array(entry["top1"])).sum())
        scored += len(targets)
        nll["pytorch"] += float(np.sum(entry["nll"]))
        nll["onnx"] += float(got_nll.sum())
        max_nll_delta = max(max_nll_delta, float(np.abs(got_nll - np.array(entry["nll"])).max()))
    if not scored:
        return {"scored_tokens": 0, "top1_agreement": None, "loss_pytorch": None, "loss_onnx": None, "loss_delta": None}
    loss_pt, loss_ox = nll["pytorch"] / scored, nll["onnx"] / scored
    return {
        "scored_tokens": scored,
        "agreeing_tokens": agree,
        "top1_agreement": agree / scored,
        "loss_pytorch": loss_pt,
        "loss_onnx": loss_ox,
        "loss_delta": loss_ox - loss_pt,
        "max_token_nll_delta": max_nll_delta,
        "perplexity_pytorch": math.exp(min(loss_pt, 700)),
        "perplexity_onnx": math.exp(min(loss_ox, 700)),
    }


def with_interval(teacher_forced: Mapping[str, Any]) -> dict[str, Any]:
    """`teacher_forced` with the top-1 agreement's 95% Wilson interval. Apart from `compare_teacher_forced`,
    so that scipy's import (1.4 s) is paid in the parent, beside the comparisons' child, not in it."""
    if not teacher_forced.get("scored_tokens"):
        return dict(teacher_forced)
    from scipy.stats import binomtest

    interval = binomtest(teacher_forced["agreeing_tokens"], teacher_forced["scored_tokens"]).proportion_ci(
        confidence_level=0.95, method="wilson")
    return {**teacher_forced, "top1_agreement_ci95": [float(interval.low), float(interval.high)]}


def compare(onnx_dir: Path, reference: Mapping[str, Any], timed: bool = True,
            threads: int | None = None) -> dict[str, Any]:
    """Greedy generation and the teacher-forced comparison of one exported folder, loaded once (see `load`
    for `threads`); picklable (the export runs it in a child process, see `checks.check_export`)."""
    start = time.perf_counter()
    model = load(onnx_dir, threads)
    results, timing = compare_generation(model, reference, timed)
    teacher_forced = compare_teacher_forced(model, reference)
    del model
    return {"results": results, "timing": timing, "teacher_forced": teacher_forced,
            "seconds": time.perf_counter() - start}


def generation_summary(results: Sequence[PromptResult]) -> dict[str, Any]:
    """Prompts identical, and greedy agreement: matching-prefix tokens over PyTorch's tokens."""
    total = sum(len(r.reference_tokens) for r in results)
    return {
        "prompts": len(results),
        "identical_prompts": sum(1 for r in results if r.first_divergence is None),
        "greedy_token_agreement": (sum(r.matching_prefix for r in results) / total) if total else None,
        "per_prompt": [asdict(r) for r in results],
    }

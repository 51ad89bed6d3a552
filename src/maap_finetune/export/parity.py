"""ONNX Runtime against the PyTorch reference Evaluate computed: greedy tokens, teacher-forced top-1 and loss, speed.

The reference (`maap_finetune.evaluation.parity_reference`) holds, per parity prompt, the prompt ids and
PyTorch's greedy tokens, and per teacher-forced position PyTorch's top-1 token and the reference token's NLL.
This side runs the exported model on the very same ids:

- greedy generation, one prompt at a time (no padding, so nothing but the engines differ), with an
  `onnxruntime_genai.Generator`: the tokens, the first position where they differ from PyTorch's, time to
  first token and decode tokens/s;
- teacher-forced: the exported graph run by onnxruntime on the whole sequence (an empty KV cache), its
  top-1 and reference-token NLL at every scored position beside PyTorch's: top-1 agreement (with its 95%
  Wilson interval), the loss of each and the largest per-position NLL difference.
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


def compare_generation(onnx_dir: Path, reference: Mapping[str, Any], decode: Callable[[list[int]], str],
                       timed: bool = True):
    """(per-prompt results, ONNX Runtime GenAI timing): greedy tokens of the export against the reference's."""
    import onnxruntime_genai as og

    model = og.Model(str(onnx_dir))
    max_new_tokens = reference["max_new_tokens"]
    prompts = reference["generation"]
    if prompts and timed:  # one untimed run first: one-time costs (allocations, kernel selection) are no one's speed
        onnx_greedy(model, prompts[0]["prompt_ids"], 2, Timing())
    timing, results = Timing(), []
    for prompt in prompts:
        got = onnx_greedy(model, prompt["prompt_ids"], max_new_tokens, timing)
        expected = list(prompt["tokens"])
        results.append(PromptResult(
            line=prompt["line"], prompt=prompt["prompt"], reference_tokens=expected, onnx_tokens=got,
            first_divergence=first_divergence(expected, got), reference_text=decode(expected), onnx_text=decode(got),
        ))
    del model
    return results, timing


def _session(onnx_dir: Path, execution_provider: str):
    import onnxruntime as ort

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if execution_provider == "cuda" else ["CPUExecutionProvider"]
    config = json.loads((onnx_dir / "genai_config.json").read_text(encoding="utf-8"))["model"]["decoder"]
    session = ort.InferenceSession(str(onnx_dir / config["filename"]), providers=providers)
    return session, int(config["head_size"])


def onnx_logits(session, head_size: int, ids: list[int]):
    """Logits at every position of `ids`, from the exported graph with an empty KV cache."""
    import numpy as np

    dtypes = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    input_ids = np.array([ids], dtype=np.int64)
    feeds: dict[str, Any] = {"input_ids": input_ids, "attention_mask": np.ones_like(input_ids)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feeds[spec.name] = np.zeros((1, spec.shape[1], 0, head_size), dtype=dtypes[spec.type])
        elif spec.name not in feeds:
            raise RuntimeError(f"the exported model has an input this check does not feed: {spec.name}")
    return session.run(["logits"], feeds)[0][0].astype(np.float32)


def compare_teacher_forced(onnx_dir: Path, reference: Mapping[str, Any], execution_provider: str) -> dict[str, Any]:
    """Top-1 agreement and reference-token loss of the export against the reference, teacher-forced."""
    import numpy as np

    session, head_size = _session(onnx_dir, execution_provider)
    agree = scored = 0
    nll = {"pytorch": 0.0, "onnx": 0.0}
    max_nll_delta = 0.0
    for entry in reference["teacher_forced"]:
        ids, start = entry["ids"], entry["start"]
        if start >= len(ids):
            continue
        rows = onnx_logits(session, head_size, ids)[start - 1 : len(ids) - 1].astype(np.float64)  # i predicts i + 1
        targets = np.array(ids[start:])
        log_z = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        got_nll = log_z - rows[np.arange(len(targets)), targets]
        agree += int((rows.argmax(-1) == np.array(entry["top1"])).sum())
        scored += len(targets)
        nll["pytorch"] += float(np.sum(entry["nll"]))
        nll["onnx"] += float(got_nll.sum())
        max_nll_delta = max(max_nll_delta, float(np.abs(got_nll - np.array(entry["nll"])).max()))
    del session
    if not scored:
        return {"scored_tokens": 0, "top1_agreement": None, "loss_pytorch": None, "loss_onnx": None, "loss_delta": None}
    loss_pt, loss_ox = nll["pytorch"] / scored, nll["onnx"] / scored
    from scipy.stats import binomtest

    interval = binomtest(agree, scored).proportion_ci(confidence_level=0.95, method="wilson")
    return {
        "scored_tokens": scored,
        "agreeing_tokens": agree,
        "top1_agreement": agree / scored,
        "top1_agreement_ci95": [float(interval.low), float(interval.high)],
        "loss_pytorch": loss_pt,
        "loss_onnx": loss_ox,
        "loss_delta": loss_ox - loss_pt,
        "max_token_nll_delta": max_nll_delta,
        "perplexity_pytorch": math.exp(min(loss_pt, 700)),
        "perplexity_onnx": math.exp(min(loss_ox, 700)),
    }


def generation_summary(results: Sequence[PromptResult]) -> dict[str, Any]:
    """Prompts identical, and greedy agreement: matching-prefix tokens over PyTorch's tokens."""
    total = sum(len(r.reference_tokens) for r in results)
    return {
        "prompts": len(results),
        "identical_prompts": sum(1 for r in results if r.first_divergence is None),
        "greedy_token_agreement": (sum(r.matching_prefix for r in results) / total) if total else None,
        "per_prompt": [asdict(r) for r in results],
    }

"""PyTorch against ONNX Runtime on the same prompts: greedy tokens, teacher-forced logits, speed.

- Greedy generation, one prompt at a time (no padding, so nothing but the engines differ): the
  PyTorch model's `generate` against an `onnxruntime_genai.Generator`. For each prompt: the tokens,
  the first position where they differ, time to first token and decode tokens/s of each engine.
- Teacher-forced on the test conversations: the exported graph run by onnxruntime on the whole
  sequence (an empty KV cache), so its logits at every position sit beside PyTorch's. Top-1
  agreement and the loss on the reference tokens (as Evaluate scores them) come from these.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


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


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for index, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return index
    return None if len(a) == len(b) else min(len(a), len(b))


def torch_greedy(loaded, prompt_ids: list[int], max_new_tokens: int, timing: Timing) -> list[int]:
    """Greedy tokens from transformers `generate`; the first token is timed apart from the rest."""
    import torch

    from maap_finetune.evaluation.generation import _greedy_config

    config = _greedy_config(loaded.model, loaded.tokenizer, max_new_tokens)
    input_ids = torch.tensor([prompt_ids], device=loaded.device)
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


def compare_generation(loaded, onnx_dir: Path, examples, max_new_tokens: int, max_seq_length: int):
    """(per-prompt results, PyTorch timing, ONNX Runtime GenAI timing) for greedy generation."""
    import onnxruntime_genai as og

    from maap_finetune.evaluation.generation import generation_prompt, prompt_text

    model = og.Model(str(onnx_dir))
    torch_timing, onnx_timing = Timing(), Timing()
    prompts = [generation_prompt(loaded.tokenizer, ex, max(1, max_seq_length - max_new_tokens))[0] for ex in examples]
    # One untimed run of each engine first: one-time costs (allocations, kernel selection) are no one's speed.
    torch_greedy(loaded, prompts[0], 2, Timing())
    onnx_greedy(model, prompts[0], 2, Timing())
    results = []
    for example, ids in zip(examples, prompts):
        reference = torch_greedy(loaded, ids, max_new_tokens, torch_timing)
        got = onnx_greedy(model, ids, max_new_tokens, onnx_timing)
        decode = loaded.tokenizer.decode
        results.append(PromptResult(
            line=example.line, prompt=prompt_text(example, loaded.tokenizer), reference_tokens=reference,
            onnx_tokens=got, first_divergence=first_divergence(reference, got),
            reference_text=decode(reference, skip_special_tokens=True), onnx_text=decode(got, skip_special_tokens=True),
        ))
    del model
    return results, torch_timing, onnx_timing


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


def compare_logits(loaded, onnx_dir: Path, examples, max_seq_length: int, execution_provider: str) -> dict[str, Any]:
    """Top-1 agreement and reference-token loss of PyTorch and ONNX Runtime, teacher-forced."""
    import numpy as np
    import torch

    from maap_finetune.evaluation.generation import loss_sequence

    session, head_size = _session(onnx_dir, execution_provider)
    agree = scored = 0
    nll = {"pytorch": 0.0, "onnx": 0.0}
    for example in examples:
        ids, start, _ = loss_sequence(loaded.tokenizer, example, max_seq_length)
        if start >= len(ids):
            continue
        with torch.no_grad():
            ref = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0].float().cpu().numpy()
        got = onnx_logits(session, head_size, ids)
        positions = np.arange(start - 1, len(ids) - 1)  # logits at i predict token i + 1
        targets = np.array(ids[start:])
        agree += int((ref[positions].argmax(-1) == got[positions].argmax(-1)).sum())
        scored += len(positions)
        for name, logits in (("pytorch", ref), ("onnx", got)):
            rows = logits[positions].astype(np.float64)
            log_z = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
            nll[name] += float((log_z - rows[np.arange(len(targets)), targets]).sum())
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

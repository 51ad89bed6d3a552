"""ONNX Runtime against the PyTorch reference Evaluate computed: greedy tokens, teacher-forced top-1 and loss, speed.

The reference (`maap_finetune.evaluation.parity_reference`) holds, per parity prompt, the prompt ids and
PyTorch's greedy tokens, and per teacher-forced position PyTorch's top-1 token and the reference token's NLL.
This side runs the exported model on the very same ids, one prompt at a time (no padding, so nothing but the
engines differ), with `onnxruntime_genai.Generator`s:

- greedy agreement, teacher-forced on PyTorch's greedy tokens (`onnx_predictions`): the export's top-1 after
  the prompt and after each greedy token, in three runs of the graph (the prompt on an empty KV cache, one
  token over the cache, the rest in one run over it) instead of one run per token. Up to the first position
  where they differ from PyTorch's tokens, they are the very tokens the export's own greedy generation picks
  (it sees the same ids there), and the stop ids of its genai_config end it where generation would: so the
  first divergence, the prompts identical and the greedy agreement are generation's, in three runs of the
  graph instead of 33 at the default 32 new tokens (the step's time: benchmarks/export_phases.py);
- speed (`speed`): time to first token and decode tokens/s of real greedy generation on the first prompt,
  run apart, with nothing else of the step beside it;
- teacher-forced: the export's logits at every position of each test row's sequence (its prompt's run
  continued over the cache when the sequence starts with the prompt, else the sequence run whole): its
  top-1 and reference-token NLL at every scored position beside PyTorch's: top-1 agreement (with its 95%
  Wilson interval), the loss of each and the largest per-position NLL difference.

The runs themselves are `maap_finetune.export.prompt_runs`.

One `onnxruntime_genai.Model` serves all three (`load`, `compare`'s `model`): the model is read and its session
made once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from maap_finetune.evaluation.parity_reference import Timing
from maap_finetune.export.prompt_runs import (PromptRuns, TeacherForcedTally, onnx_logits, onnx_predictions, scored,
                                              sequence_logits)


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


def stop_ids(onnx_dir: Path) -> set[int]:
    """The ids the export's greedy generation stops at: its genai_config's eos_token_id (one id or a list)."""
    eos = json.loads((Path(onnx_dir) / "genai_config.json").read_text(encoding="utf-8"))["model"]["eos_token_id"]
    return {int(i) for i in (eos if isinstance(eos, list) else [eos])}


def greedy_from_predictions(tokens: list[int], predictions: list[int], stops: set[int],
                            max_new_tokens: int) -> list[int]:
    """The export's greedy tokens, from its teacher-forced `predictions` along PyTorch's `tokens`: PyTorch's
    tokens while they agree, the export's own token where they first differ, cut where the export stops
    (a stop id of its own, or `max_new_tokens`); past PyTorch's last token, the export's next one when it
    would go on (PyTorch stopped on an id the export does not stop at)."""
    out = []
    for expected, predicted in zip([*tokens, None], predictions):
        out.append(predicted)
        if predicted != expected or predicted in stops or len(out) == max_new_tokens:
            break
    return out


def generation_result(prompt: Mapping[str, Any], predictions: list[int], stops: set[int],
                      max_new_tokens: int) -> PromptResult:
    """One prompt's result: the export's greedy tokens (`greedy_from_predictions`) against the reference's; for a
    reference row with "top1" (the fp32 graph check's), the export's top-1 against that one, position by
    position. The texts are left empty (`add_texts` fills them where the tokenizer is loaded)."""
    tokens = list(prompt["tokens"])
    if "top1" in prompt:  # the fp32 graph check's cut model: PyTorch's top-1 along the same tokens
        expected, got = list(prompt["top1"]), predictions
    else:
        expected, got = tokens, greedy_from_predictions(tokens, predictions, stops, max_new_tokens)
    return PromptResult(line=prompt["line"], prompt=prompt["prompt"], reference_tokens=expected, onnx_tokens=got,
                        first_divergence=first_divergence(expected, got))


def compare_generation(model, reference: Mapping[str, Any], stops: set[int]) -> list[PromptResult]:
    """`generation_result` of every parity prompt, on its own `PromptRuns`."""
    results = []
    for prompt in reference["generation"]:
        runs = PromptRuns(model, prompt["prompt_ids"], len(prompt["tokens"]) + 1)
        predictions, _ = onnx_predictions(runs, list(prompt["tokens"]))
        results.append(generation_result(prompt, predictions, stops, reference["max_new_tokens"]))
    return results


def speed(model, reference: Mapping[str, Any]) -> Timing:
    """Time to first token and decode tokens/s of the export's greedy generation on the first parity prompt,
    after one untimed run (one-time costs, allocations and kernel selection, are no one's speed)."""
    timing = Timing()
    if reference["generation"]:
        prompt_ids = reference["generation"][0]["prompt_ids"]
        onnx_greedy(model, prompt_ids, 2, Timing())
        onnx_greedy(model, prompt_ids, reference["max_new_tokens"], timing)
    return timing


def add_texts(results: Sequence[PromptResult], decode: Callable[[list[int]], str]) -> Sequence[PromptResult]:
    for result in results:
        result.reference_text, result.onnx_text = decode(result.reference_tokens), decode(result.onnx_tokens)
    return results


def compare_teacher_forced(model, reference: Mapping[str, Any], tally: TeacherForcedTally | None = None,
                           done: set[int] = frozenset()) -> dict[str, Any]:
    """Top-1 agreement and reference-token loss of the export against the reference, teacher-forced, each
    sequence run whole (`with_interval` adds the agreement's interval); added to `tally`, which already holds
    the entries `done` (by index)."""
    tally = TeacherForcedTally() if tally is None else tally
    for index, entry in enumerate(reference["teacher_forced"]):
        if index not in done and scored(entry):
            tally.add(entry, onnx_logits(model, entry["ids"]))
    return tally.summary()


def with_interval(teacher_forced: Mapping[str, Any]) -> dict[str, Any]:
    """`teacher_forced` with the top-1 agreement's 95% Wilson interval. Apart from `compare_teacher_forced`,
    so that scipy's import (1.4 s) is paid in the parent, beside the comparisons' child, not in it."""
    if not teacher_forced.get("scored_tokens"):
        return dict(teacher_forced)
    from scipy.stats import binomtest

    interval = binomtest(teacher_forced["agreeing_tokens"], teacher_forced["scored_tokens"]).proportion_ci(
        confidence_level=0.95, method="wilson")
    return {**teacher_forced, "top1_agreement_ci95": [float(interval.low), float(interval.high)]}


def compare(onnx_dir: Path, reference: Mapping[str, Any], threads: int | None = None, model=None) -> dict[str, Any]:
    """Greedy agreement and the teacher-forced comparison of one exported folder, untimed, on `model` (its
    `load`ed folder) or loaded here (see `load` for `threads`); picklable (the export runs it in a child
    process, see `checks.check_export`). Each prompt's `PromptRuns` also gives the logits of its test row's
    teacher-forced sequence when that starts with the prompt (Evaluate builds both from the same row); the
    other sequences run whole."""
    start = time.perf_counter()
    model = load(onnx_dir, threads) if model is None else model
    stops, forced = stop_ids(onnx_dir), reference["teacher_forced"]
    results, tally, done = [], TeacherForcedTally(), set()
    for index, prompt in enumerate(reference["generation"]):
        prompt_ids, tokens = list(prompt["prompt_ids"]), list(prompt["tokens"])
        entry = forced[index] if index < len(forced) and forced[index]["line"] == prompt["line"] else None
        rest = 0 if entry is None else len(entry["ids"]) - len(prompt_ids)
        runs = PromptRuns(model, prompt_ids, max(len(tokens) + 1, rest))
        predictions, after_tokens = onnx_predictions(runs, tokens)
        results.append(generation_result(prompt, predictions, stops, reference["max_new_tokens"]))
        if entry is not None and scored(entry):
            logits = sequence_logits(runs, prompt_ids, tokens, after_tokens, list(entry["ids"]))
            if logits is not None:
                tally.add(entry, logits)
                done.add(index)
        del runs
    teacher_forced = compare_teacher_forced(model, reference, tally, done)
    del model
    return {"results": results, "teacher_forced": teacher_forced, "seconds": time.perf_counter() - start}


def generation_summary(results: Sequence[PromptResult]) -> dict[str, Any]:
    """Prompts identical, and greedy agreement: matching-prefix tokens over PyTorch's tokens."""
    total = sum(len(r.reference_tokens) for r in results)
    return {
        "prompts": len(results),
        "identical_prompts": sum(1 for r in results if r.first_divergence is None),
        "greedy_token_agreement": (sum(r.matching_prefix for r in results) / total) if total else None,
        "per_prompt": [asdict(r) for r in results],
    }

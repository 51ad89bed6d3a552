"""The fp32 graph check: the conversion itself proved on the model's first N layers, at any model size.

The export's precision (int4) has an error of its own, so its agreement with PyTorch says little about
whether the graph the builder wrote computes what the model computes. This check builds the same model,
cut to its first `layers` decoder layers, as fp32 with the same builder, and requires it to match
PyTorch running the same cut model in fp32 on the parity ids:

- along each parity prompt's greedy tokens (Evaluate's), the top-1 after the prompt and after every token
  identical: ONNX Runtime runs the prompt on an empty KV cache, then one token over the cache, then the rest
  in one run over it (`prompt_runs.onnx_predictions`: the decode path generation takes), PyTorch runs one
  forward. Both teacher-forced, so neither side generates token by token (256 steps of the cut model cost
  more than the rest of the check: measured 4.8 s of PyTorch's 5.8 s at 443M parameters on 2 cores);
- teacher-forced top-1 identical at every scored position, and the reference token's NLL within
  `NLL_TOLERANCE` nats at every position (fp32 kernels differ in summation order only).

The cut copy keeps the embedding, the first `layers` layers, the final norm and the LM head: every kind of
node the full graph has. Its layers and final norm are the model's own, every weight. Its vocabulary is cut
too (`kept_vocabulary`): the embedding and LM head keep only the rows of the ids the check reads or
predicts (every id of the parity prompts, of the teacher-forced sequences, of Evaluate's greedy tokens and
top-1, the bos/eos/pad ids) and of `SPREAD_IDS` ids evenly spaced over the whole vocabulary, so that greedy
generation chooses among over a thousand rows, up to the table's end. Both sides run that same cut model
on the reference's ids renumbered into it, and its tokens are renumbered back before they are decoded. Not
covered here: the rows of the other ids (their gather and LM-head columns are the same nodes, only other
rows of the same initializers); the int4 parity check, on the whole export against Evaluate's reference,
covers the full vocabulary. At 220M parameters the two vocab-32064 tables were about 72% of a 2-layer cut
copy in fp32. Only its tensors are read (safetensors' `safe_open`), so neither side ever holds the full
model; the PyTorch side loads the cut copy, which is small.
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
# Ids evenly spaced over the vocabulary kept beside the ones the check uses: greedy generation and top-1
# over the cut vocabulary are a choice among at least this many rows, spread to the table's last rows.
SPREAD_IDS = 1024
VOCABULARY_FILE = "cut_vocabulary.json"


def special_ids(model_dir: Path, tokenizer_dir: Path) -> dict[str, Any]:
    """bos, eos (every stop id of the config, the generation config and the tokenizer) and pad ids."""
    from transformers import AutoTokenizer

    sources = [json.loads((model_dir / name).read_text(encoding="utf-8"))
               for name in CONFIG_FILES if (model_dir / name).is_file()]
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    sources.append({f"{k}_token_id": getattr(tokenizer, f"{k}_token_id") for k in ("bos", "eos", "pad")})

    def found(key):
        values = [source.get(key) for source in sources]
        flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
        return [int(v) for v in dict.fromkeys(flat) if v is not None]

    eos = found("eos_token_id")
    if not eos:
        raise RuntimeError(f"{model_dir}: no eos_token_id in the config, generation config or tokenizer")
    return {"bos": (found("bos_token_id") or [None])[0], "eos": eos, "pad": (found("pad_token_id") or eos)[0]}


def kept_vocabulary(vocab_size: int, reference: Mapping[str, Any], special: Mapping[str, Any],
                    spread: int = SPREAD_IDS) -> list[int]:
    """The ids the cut copy keeps, ascending: every id the reference reads or predicts, the special ids
    and `spread` ids evenly spaced over the vocabulary (always its last one)."""
    ids = {i for i in (special["bos"], special["pad"], *special["eos"]) if i is not None}
    for row in reference["generation"]:
        ids.update(row["prompt_ids"], row["tokens"])
    for row in reference["teacher_forced"]:
        ids.update(row["ids"] or [], row["top1"])
    ids.update(round(k * (vocab_size - 1) / max(spread - 1, 1)) for k in range(spread))
    outside = sorted(i for i in ids if not 0 <= i < vocab_size)
    if outside:
        raise RuntimeError(f"ids {outside[:5]} are outside the model's vocabulary of {vocab_size}")
    return sorted(ids)


def cut_model(model_dir: Path, layers: int, dest: Path, vocabulary: list[int] | None = None,
              special: Mapping[str, Any] | None = None) -> tuple[Path, int]:
    """Write the first `layers` decoder layers of `model_dir` (with embedding, final norm, LM head) to `dest`;
    with `vocabulary` (ascending ids, see `kept_vocabulary`) and `special` (`special_ids`), only those rows
    of every tensor indexed by the vocabulary, renumbered 0..len-1, with the special ids renumbered.

    Returns (dest, the number of layers kept: `layers`, or the model's own count when it has fewer).
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    kept = min(layers, int(config["num_hidden_layers"]))
    vocab_size = int(config["vocab_size"])
    rows = None if vocabulary is None or len(vocabulary) == vocab_size else vocabulary
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise RuntimeError(f"{model_dir}: no .safetensors weights to cut the fp32 graph check's model from")
    tensors = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                match = _LAYER.search(name)
                if match is None or int(match.group(1)) < kept:
                    tensors[name] = _rows(handle, name, vocab_size, rows) if match is None else handle.get_tensor(name)
    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    del tensors
    config["num_hidden_layers"] = kept
    if isinstance(config.get("layer_types"), list):
        config["layer_types"] = config["layer_types"][:kept]
    configs = {"config.json": config}
    if (model_dir / "generation_config.json").is_file():
        configs["generation_config.json"] = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    if rows is not None:
        renumbered = _renumber_special(rows, special)
        config["vocab_size"] = len(rows)
        if isinstance(config.get("dummy_token_indices"), list):  # Phi-3-small's masked LM-head ids
            kept_ids = {old: index for index, old in enumerate(rows)}
            config["dummy_token_indices"] = [kept_ids[i] for i in config["dummy_token_indices"] if i in kept_ids]
        for written in configs.values():
            written.update({f"{k}_token_id": v for k, v in renumbered.items()})
        (dest / VOCABULARY_FILE).write_text(json.dumps({"ids": rows, "special": renumbered}), encoding="utf-8")
    for name, written in configs.items():
        (dest / name).write_text(json.dumps(written, indent=2), encoding="utf-8")
    return dest, kept


def _rows(handle, name: str, vocab_size: int, rows: list[int] | None):
    """A tensor outside the layers; the kept rows only when it is indexed by the vocabulary (the embedding,
    the LM head and its bias, tied or not)."""
    import torch

    if rows is None or handle.get_slice(name).get_shape()[:1] != [vocab_size]:
        return handle.get_tensor(name)
    return handle.get_tensor(name).index_select(0, torch.tensor(rows)).contiguous()


def _renumber_special(rows: list[int], special: Mapping[str, Any]) -> dict[str, Any]:
    new = {old: index for index, old in enumerate(rows)}
    return {"bos": None if special["bos"] is None else new[special["bos"]], "eos": [new[i] for i in special["eos"]],
            "pad": new[special["pad"]]}


def vocabulary_of(cut_dir: Path) -> dict[str, Any] | None:
    """The cut vocabulary `cut_model` wrote (kept ids, renumbered special ids), None when it kept every id."""
    path = cut_dir / VOCABULARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def renumbered(reference: Mapping[str, Any], ids: list[int]) -> dict[str, Any]:
    """The parity inputs of `reference` with every id renumbered into the cut vocabulary `ids`."""
    new = {old: index for index, old in enumerate(ids)}
    return {
        "generation": [{**row, "prompt_ids": [new[i] for i in row["prompt_ids"]], "tokens": [new[i] for i in row["tokens"]]}
                       for row in reference["generation"]],
        "teacher_forced": [{**row, "ids": None if row["ids"] is None else [new[i] for i in row["ids"]]}
                           for row in reference["teacher_forced"]],
    }


def in_model_ids(decode, vocabulary: list[int] | None):
    """`decode` of cut-vocabulary tokens: renumbered back to the model's ids first."""
    if vocabulary is None:
        return decode
    return lambda tokens: decode([vocabulary[t] for t in tokens])


def pytorch_reference(cut_dir: Path, tokenizer_dir: Path, reference: Mapping[str, Any]) -> dict[str, Any]:
    """The cut model's PyTorch fp32 reference on Evaluate's reference ids, all teacher-forced: per parity prompt
    its top-1 after the prompt and after each of Evaluate's greedy tokens, and per teacher-forced sequence its
    top-1 and the reference token's NLL (`parity_reference.teacher_forced`)."""
    import gc

    from maap_finetune.evaluation import parity_reference
    from maap_finetune.evaluation.generation import load_model

    vocabulary = vocabulary_of(cut_dir)
    ids = None if vocabulary is None else vocabulary["ids"]
    if ids is not None:
        reference = {**reference, **renumbered(reference, ids)}
    loaded = load_model(str(cut_dir), str(tokenizer_dir), trust_remote_code=False, device="cpu")
    generation = [{**row, "top1": parity_reference.predictions(loaded, row["prompt_ids"], row["tokens"])}
                  for row in reference["generation"]]
    forced = [parity_reference.teacher_forced_entry(loaded, row["line"], row["ids"], row["start"])
              for row in reference["teacher_forced"]]
    del loaded
    gc.collect()
    return {"max_new_tokens": reference["max_new_tokens"], "vocabulary": ids, "generation": generation,
            "teacher_forced": forced}


def compare(cut_reference: Mapping[str, Any], onnx_dir: Path, decode) -> dict[str, Any]:
    """The fp32 graph check's result: the generation summary plus the teacher-forced comparison."""
    from maap_finetune.export import parity

    return summary(parity.compare(onnx_dir, cut_reference),
                   in_model_ids(decode, cut_reference.get("vocabulary")))


def summary(compared: Mapping[str, Any], decode) -> dict[str, Any]:
    """`parity.compare`'s result for the cut copy as the check's result (its texts decoded here)."""
    from maap_finetune.export import parity

    result = parity.generation_summary(parity.add_texts(compared["results"], decode))
    return {**result, "teacher_forced": parity.with_interval(compared["teacher_forced"]), "nll_tolerance": NLL_TOLERANCE}


def prepare_cut(hf_folder: Path, tokenizer_dir: Path, layers: int, dest: Path,
                reference: Mapping[str, Any] | None = None, spread: int = SPREAD_IDS) -> tuple[Path, int]:
    """`cut_model` plus the tokenizer files (links), as the builder and PyTorch read a model folder; with
    `reference`, the vocabulary cut to `kept_vocabulary`."""
    from maap_finetune.export import builder

    vocabulary = special = None
    if reference is not None:
        special = special_ids(hf_folder, tokenizer_dir)
        vocab_size = int(json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))["vocab_size"])
        vocabulary = kept_vocabulary(vocab_size, reference, special, spread)
    cut_dir, kept = cut_model(hf_folder, layers, dest, vocabulary, special)
    for name in builder.TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file() and not (cut_dir / name).exists():
            (cut_dir / name).symlink_to((tokenizer_dir / name).resolve())
    return cut_dir, kept


def build_cut(cut_dir: Path, onnx_dir: Path, execution_provider: str, cache_dir: Path, in_child: bool) -> Path:
    """The cut copy built as fp32; its genai_config's bos/eos/pad set to the cut vocabulary's (the builder
    adds the tokenizer's eos id, a full-vocabulary id), so that ONNX stops on the very ids PyTorch does."""
    from maap_finetune.export import builder

    built = builder.build(cut_dir, onnx_dir, "fp32", execution_provider, cache_dir, 32, None, in_child=in_child)
    vocabulary = vocabulary_of(cut_dir)
    if vocabulary is not None:
        path = built / "genai_config.json"
        genai = json.loads(path.read_text(encoding="utf-8"))
        special = vocabulary["special"]
        genai["model"].update({"eos_token_id": special["eos"], "pad_token_id": special["pad"]})
        if special["bos"] is not None:
            genai["model"]["bos_token_id"] = special["bos"]
        path.write_text(json.dumps(genai, indent=4), encoding="utf-8")
    return built


def folders(scratch: Path) -> dict[str, Path]:
    return {"cut": scratch / "cut", "onnx": scratch / "cut_onnx", "cache": scratch / "cut_cache"}


def prepare(hf_folder: str, tokenizer_dir: str, reference: Mapping[str, Any], layers: int, execution_provider: str,
            scratch: str) -> dict:
    """Cut, build the cut copy as fp32, and run PyTorch fp32 on it; meant for the build child
    (builder.BuildChild), which imports torch, transformers and the builder once for this and the full
    build. Returns what `finish` compares: the kept layers and the cut reference."""
    where = folders(Path(scratch))
    cut_dir, kept = prepare_cut(Path(hf_folder), Path(tokenizer_dir), layers, where["cut"], reference)
    # Its layers and cut embedding and head: far below the full build, so it builds in this process.
    build_cut(cut_dir, where["onnx"], execution_provider, where["cache"], in_child=False)
    return {"layers": kept, "reference": pytorch_reference(cut_dir, Path(tokenizer_dir), reference)}


def compare_cut(prepared: Mapping[str, Any], scratch: str) -> dict[str, Any]:
    """The cut copy's fp32 ONNX graph run on its PyTorch reference's ids (`parity.compare`, untimed); the
    scratch files are removed after. Picklable, for the checks' child (`checks.compare_cut_in_child`). On one
    thread: untimed, it runs beside the parent's imports, and ONNX Runtime's second thread, waiting for a
    busy core, slowed it threefold there (measured at 0.1b on 2 cores: 15.8 s against 5.2 s alone)."""
    import shutil

    from maap_finetune.export import parity

    try:
        return parity.compare(folders(Path(scratch))["onnx"], prepared["reference"], threads=1)
    finally:
        for folder in folders(Path(scratch)).values():
            shutil.rmtree(folder, ignore_errors=True)


def finish(prepared: Mapping[str, Any], compared: Mapping[str, Any], hf_folder: Path, decode) -> dict[str, Any]:
    """The check's result from `prepare` and `compare_cut`."""
    config = json.loads((hf_folder / "config.json").read_text(encoding="utf-8"))
    ids = prepared["reference"].get("vocabulary")
    return {"layers": prepared["layers"], "model_layers": config["num_hidden_layers"],
            "vocabulary": len(ids) if ids else config["vocab_size"], "model_vocabulary": config["vocab_size"],
            **summary(compared, in_model_ids(decode, ids))}


def run(hf_folder: Path, tokenizer_dir: Path, reference: Mapping[str, Any], layers: int, execution_provider: str,
        scratch: Path, decode) -> dict[str, Any]:
    """`prepare`, `compare_cut` and `finish`: the whole check in this process."""
    prepared = prepare(str(hf_folder), str(tokenizer_dir), reference, layers, execution_provider, str(scratch))
    return finish(prepared, compare_cut(prepared, str(scratch)), hf_folder, decode)


def failures(check: Mapping[str, Any]) -> list[str]:
    """One line per prompt whose top-1 along the greedy tokens differs, and one for the teacher-forced comparison."""
    where = f"fp32 graph check (first {check['layers']} of {check['model_layers']} layers)"
    lines = []
    for prompt in check["per_prompt"]:
        index = prompt["first_divergence"]
        if index is None:
            continue
        ref, got = prompt["reference_tokens"], prompt["onnx_tokens"]
        expected = ref[index] if index < len(ref) else "end of sequence"
        found = got[index] if index < len(got) else "end of sequence"
        lines.append(f"{where}: the fp32 top-1 along the greedy tokens differs from PyTorch for test line "
                     f"{prompt['line']} at generated token {index}: PyTorch {expected}, ONNX Runtime GenAI {found}")
    tf = check["teacher_forced"]
    if tf.get("scored_tokens") and (tf["agreeing_tokens"] != tf["scored_tokens"]
                                    or tf["max_token_nll_delta"] > check["nll_tolerance"]):
        lines.append(f"{where}: teacher-forced top-1 differs from PyTorch at {tf['scored_tokens'] - tf['agreeing_tokens']}"
                     f" of {tf['scored_tokens']} positions, and the reference token's NLL by up to "
                     f"{tf['max_token_nll_delta']:.3g} nats (tolerance {check['nll_tolerance']:g})")
    return lines

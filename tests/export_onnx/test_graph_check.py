"""The fp32 graph check is sound: it passes the builder's own graph and fails a broken weight or a broken graph.

The check runs on the tiny fine-tuned model (a trained model: its logits mean something, unlike a random
init's near-uniform ones) cut to its first layer, against PyTorch running the same cut model in fp32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from maap_finetune.export import builder, graph_check
from maap_finetune.models.source import resolve_model_source


@pytest.fixture(scope="module")
def cut_check(tmp_path_factory, finetuned_mlflow_model, tiny_reference):
    """(the cut model's PyTorch reference, its fp32 ONNX folder, decode, scratch) for the first layer."""
    from transformers import AutoTokenizer

    scratch = tmp_path_factory.mktemp("graph-check")
    source = resolve_model_source(finetuned_mlflow_model, None)
    hf = builder.stage_hf_folder(Path(source.model), Path(source.tokenizer), scratch / "hf")
    cut_dir, kept = graph_check.prepare_cut(hf, Path(source.tokenizer), 1, scratch / "cut")
    assert kept == 1
    reference = graph_check.pytorch_reference(cut_dir, Path(source.tokenizer), tiny_reference)
    onnx_dir = builder.build(cut_dir, scratch / "onnx", "fp32", "cpu", scratch / "cache", 32, None)
    tokenizer = AutoTokenizer.from_pretrained(source.tokenizer)
    return reference, onnx_dir, lambda tokens: tokenizer.decode(tokens, skip_special_tokens=True), scratch


def _failures(reference, onnx_dir, decode) -> list[str]:
    result = graph_check.compare(reference, onnx_dir, decode)
    return graph_check.failures({"layers": 1, "model_layers": 2, **result}), result


def test_the_cut_copy_holds_only_the_first_layers(tmp_path, finetuned_mlflow_model):
    from safetensors import safe_open

    source = resolve_model_source(finetuned_mlflow_model, None)
    cut_dir, kept = graph_check.cut_model(Path(source.model), 1, tmp_path / "cut")
    with safe_open(str(cut_dir / "model.safetensors"), framework="pt") as handle:
        names = set(handle.keys())
    assert kept == 1 and json.loads((cut_dir / "config.json").read_text())["num_hidden_layers"] == 1
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= names
    assert any(".layers.0." in n for n in names) and not any(".layers.1." in n for n in names)
    assert graph_check.cut_model(Path(source.model), 50, tmp_path / "all")[1] == 2  # never more than the model has


def test_cut_to_every_layer_the_pytorch_side_is_evaluates_reference(tmp_path, finetuned_mlflow_model, tiny_reference):
    """The cut copy is the model itself when it keeps every layer: the same tokens, top-1 and NLL as Evaluate's."""
    source = resolve_model_source(finetuned_mlflow_model, None)
    cut_dir, _ = graph_check.prepare_cut(Path(source.model), Path(source.tokenizer), 2, tmp_path / "cut")
    reference = graph_check.pytorch_reference(cut_dir, Path(source.tokenizer), tiny_reference)
    assert [g["tokens"] for g in reference["generation"]] == [g["tokens"] for g in tiny_reference["generation"]]
    for got, want in zip(reference["teacher_forced"], tiny_reference["teacher_forced"]):
        assert got["top1"] == want["top1"] and got["nll"] == pytest.approx(want["nll"], abs=1e-6)


def test_the_builders_fp32_graph_passes_with_a_wide_margin(cut_check):
    reference, onnx_dir, decode, _ = cut_check
    failures, result = _failures(reference, onnx_dir, decode)
    assert failures == []
    assert result["identical_prompts"] == result["prompts"] == 3
    tf = result["teacher_forced"]
    assert tf["agreeing_tokens"] == tf["scored_tokens"] > 0
    assert tf["max_token_nll_delta"] < graph_check.NLL_TOLERANCE / 10


def _edited_copy(onnx_dir: Path, dest: Path, edit) -> Path:
    import onnx

    shutil.copytree(onnx_dir, dest)
    model = onnx.load(str(dest / "model.onnx"))
    edit(model)
    (dest / "model.onnx.data").unlink()
    onnx.save(model, str(dest / "model.onnx"), save_as_external_data=True, location="model.onnx.data")
    return dest


def _scale_down_proj(model):
    from onnx import numpy_helper

    (tensor,) = [t for t in model.graph.initializer if t.name == "model.layers.0.mlp.down_proj.MatMul.weight"]
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor) * 1.01, tensor.name))


def _tanh_for_sigmoid(model):
    (node,) = [n for n in model.graph.node if n.name == "/model/layers.0/mlp/act_fn/Sigmoid"]
    node.op_type = "Tanh"


@pytest.mark.parametrize("edit", [_scale_down_proj, _tanh_for_sigmoid], ids=["weight_scaled_1pct", "silu_to_tanh"])
def test_a_broken_weight_or_graph_fails_the_check(cut_check, edit):
    reference, onnx_dir, decode, scratch = cut_check
    broken = _edited_copy(onnx_dir, scratch / edit.__name__, edit)
    failures, result = _failures(reference, broken, decode)
    assert failures and all(f.startswith("fp32 graph check (first 1 of 2 layers)") for f in failures)
    # Measured: 5.2e-3 nats for the 1% scale of one tensor of the tiny model, against < 1e-4 unbroken.
    assert result["teacher_forced"]["max_token_nll_delta"] > 2 * graph_check.NLL_TOLERANCE

"""Export ONNX's agreement gate judges top-1 agreement with its 95% Wilson interval: a shortfall of a token
or two on a small test split passes, the same rate over enough tokens fails."""

from __future__ import annotations

import pytest

from maap_finetune.export.report import markdown, threshold_failures


def _teacher_forced(agree: int, scored: int, loss_delta: float = 0.01) -> dict:
    from scipy.stats import binomtest

    interval = binomtest(agree, scored).proportion_ci(confidence_level=0.95, method="wilson")
    return {"scored_tokens": scored, "agreeing_tokens": agree, "top1_agreement": agree / scored,
            "top1_agreement_ci95": [interval.low, interval.high], "loss_pytorch": 6.0, "loss_onnx": 6.0 + loss_delta,
            "loss_delta": loss_delta}


def test_a_small_split_one_or_two_tokens_short_passes():
    # 34 of 39 (0.872): what the tool-call sample's two test rows gave with int4 on the tiny model.
    assert threshold_failures(_teacher_forced(34, 39), 0.9, 0.05, "int4") == []


def test_the_same_rate_over_enough_tokens_fails_with_the_interval_in_the_message():
    (failure,) = threshold_failures(_teacher_forced(872, 1000), 0.9, 0.05, "int4")
    assert failure.startswith("int4: top-1 token agreement with PyTorch 0.8720 over 1000 test tokens (95% interval ")
    assert failure.endswith("is below min_token_agreement 0.9")


@pytest.mark.parametrize("agree, scored", [(0, 39), (20, 39)])
def test_a_real_shortfall_fails_even_on_a_small_split(agree, scored):
    assert len(threshold_failures(_teacher_forced(agree, scored), 0.9, 0.05, "int4")) == 1


def test_the_loss_gate_is_unchanged():
    (failure,) = threshold_failures(_teacher_forced(39, 39, loss_delta=0.2), 0.9, 0.05, "int4")
    assert "more than max_loss_delta 0.05" in failure


def test_the_markdown_report_shows_the_interval():
    report = {"exported": True, "passed": True, "precision": "int4", "execution_provider": "cpu",
              "architecture": "phi3", "build_seconds": 1.0, "failures": [],
              "size_bytes": {"pytorch": 2e6, "onnx": 1e6},
              "speed": {"pytorch": {"time_to_first_token_s": 0.1, "decode_tokens_per_s": 10.0},
                        "onnx_genai": {"engine": "onnxruntime-genai, int4 on cpu", "time_to_first_token_s": 0.05,
                                       "decode_tokens_per_s": 50.0},
                        "decode_speedup": None, "note": "PyTorch was timed by Evaluate on gpu-node"},
              "thresholds": {"min_token_agreement": 0.9, "max_loss_delta": 0.05},
              "agreement": {"teacher_forced": _teacher_forced(34, 39), "generation": None}}
    text = markdown(report)
    assert "over 39 test tokens (95% interval 0.7329 to 0.9440;" in text
    assert "No decode speed-up: PyTorch was timed by Evaluate on gpu-node." in text

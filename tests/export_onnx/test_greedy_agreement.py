"""Greedy agreement from teacher-forced predictions is what the export's own greedy generation gives.

`parity.greedy_from_predictions` turns the export's top-1 along PyTorch's greedy tokens into the tokens its
greedy generation picks: checked case by case here, and against real generation (`parity.onnx_greedy`) on the
tiny model's fp32 cut copy in tests/export_onnx/test_graph_check.py.
"""

from __future__ import annotations

import pytest

from maap_finetune.export.parity import first_divergence, greedy_from_predictions

EOS = 2


@pytest.mark.parametrize(("tokens", "predictions", "expected"), [
    # every token agrees, and both stop on EOS
    ([5, 6, EOS], [5, 6, EOS, 9], [5, 6, EOS]),
    # every token agrees up to max_new_tokens (3): generation ends there, the prediction past it is unused
    ([5, 6, 7], [5, 6, 7, 8], [5, 6, 7]),
    # the export picks another token at position 1: its own token, then generation would go its own way
    ([5, 6, 7], [5, 9, 7, 8], [5, 9]),
    # the export stops on an id PyTorch went past (a stop id of the export's genai_config only)
    ([5, 3, 7], [5, 3, 7, 8], [5, 3]),
    # PyTorch stopped on an id the export does not stop at: the export goes on with its next token
    ([5, 4], [5, 4, 8], [5, 4, 8]),
])
def test_greedy_tokens_from_teacher_forced_predictions(tokens, predictions, expected):
    stops = {EOS, 3}
    assert greedy_from_predictions(tokens, predictions, stops, max_new_tokens=3) == expected


def test_the_first_divergence_is_where_generation_would_leave_pytorchs_tokens():
    tokens = [5, 6, 7]
    assert first_divergence(tokens, greedy_from_predictions(tokens, [5, 9, 7, 8], {EOS}, 3)) == 1
    assert first_divergence([5, 3, 7], greedy_from_predictions([5, 3, 7], [5, 3, 7, 8], {3}, 3)) == 2
    assert first_divergence([5, 4], greedy_from_predictions([5, 4], [5, 4, 8], {EOS}, 3)) == 2
    assert first_divergence(tokens, greedy_from_predictions(tokens, [5, 6, 7, 8], {EOS}, 3)) is None


def test_the_reports_decoder_is_transformers_decode(tiny_model_dir):
    """`checks.text_decoder` decodes with the tokenizers library where transformers' fast tokenizer would give
    the same text: every id, special ones skipped, in random sequences of the tiny tokenizer."""
    import random
    from pathlib import Path

    from transformers import AutoTokenizer

    from maap_finetune.export.checks import text_decoder

    from tokenizers import Tokenizer

    assert type(Tokenizer.from_file(str(Path(tiny_model_dir) / "tokenizer.json")).model).__name__ == "BPE"  # its path
    auto = AutoTokenizer.from_pretrained(tiny_model_dir)
    decode = text_decoder(Path(tiny_model_dir))
    rng = random.Random(0)
    special = list(auto.all_special_ids)
    for _ in range(50):
        ids = [rng.randrange(len(auto)) for _ in range(rng.randint(1, 40))] + rng.sample(special, min(2, len(special)))
        rng.shuffle(ids)
        assert decode(ids) == auto.decode(ids, skip_special_tokens=True)

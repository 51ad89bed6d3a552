"""One check of the names Register and Export ONNX register under (Export appends -onnx, so 5 fewer characters)."""

from __future__ import annotations

from maap_finetune.registry.names import registration_name_problems


def test_good_names_pass():
    assert registration_name_problems("maap-finetuned", None) == []
    assert registration_name_problems("a" * 255, "my_registry-1") == []
    assert registration_name_problems("a" * 250, None, suffix="-onnx") == []


def test_each_bad_name_is_one_message_naming_the_limit_and_the_suffix():
    (message,) = registration_name_problems("a" * 256, None)
    assert message.endswith("starting with a letter or digit, at most 255 characters")
    (message,) = registration_name_problems("a" * 251, None, suffix="-onnx")
    assert message.endswith("at most 250 characters (-onnx is appended)")
    assert registration_name_problems("bad name!", "x") == [
        "--registered_model_name 'bad name!': use letters, digits, '-', '_' and '.', starting with a letter or digit, "
        "at most 255 characters",
        "--registry_name 'x': 3-33 letters, digits, '-' or '_'",
    ]
    assert len(registration_name_problems("-leading-dash", "r" * 34)) == 2

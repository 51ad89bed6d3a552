"""Task preference: every accepted layout becomes the same normalized pair, every pair problem is
reported at file:line:field, the report measures chosen against rejected, and no prompt is in two splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maap_finetune.common.errors import UserError
from tests.data_prep.conftest import write_jsonl

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample" / "preference.jsonl"
SYSTEM = {"role": "system", "content": "You are Contoso's assistant."}
USER = {"role": "user", "content": "Do you fix e-bikes?"}
GOOD = {"role": "assistant", "content": "Yes, our workshop services e-bikes of every brand."}
BAD = {"role": "assistant", "content": "Ask someone else."}
NORMALIZED = {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}


def _others(n: int = 3) -> list[dict]:
    """More valid Azure OpenAI rows with other prompts."""
    return [{"input": {"messages": [{"role": "user", "content": f"Question {i}?"}]},
             "preferred_output": [{"role": "assistant", "content": f"Answer {i}."}],
             "non_preferred_output": [{"role": "assistant", "content": f"No idea {i}."}]} for i in range(n)]


TOOL = {"type": "function", "function": {"name": "check_stock", "parameters": {"type": "object", "properties": {}}}}
LAYOUTS = [
    ("aoai_dpo", {"input": {"messages": [SYSTEM, USER], "tools": [TOOL]}, "preferred_output": [GOOD],
                  "non_preferred_output": [BAD]}, {}, {**NORMALIZED, "tools": [TOOL]}),
    ("trl_strings", {"prompt": USER["content"], "chosen": GOOD["content"], "rejected": BAD["content"]}, {},
     {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}),
    ("trl_conversations", {"prompt": [SYSTEM, USER], "chosen": [GOOD], "rejected": [BAD]}, {}, NORMALIZED),
    ("trl_implicit_prompt", {"chosen": [SYSTEM, USER, GOOD], "rejected": [SYSTEM, USER, BAD]}, {}, NORMALIZED),
    ("keys", {"question": [SYSTEM, USER], "good": GOOD["content"], "bad": [BAD]},
     {"prompt_key": "question", "chosen_key": "good", "rejected_key": "bad"}, NORMALIZED),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=[case[0] for case in LAYOUTS])
def test_each_layout_becomes_the_normalized_pair(prep, tmp_path, all_rows_train, layout):
    name, row, keys, expected = layout
    path = write_jsonl(tmp_path / "pairs.jsonl", [row])
    report = prep(path, task="preference", **keys, **all_rows_train)
    assert prep.rows() == [expected]
    assert prep.metadata()["format"] == "preference"
    assert report["layout"] == {"aoai_dpo": "aoai_dpo", "trl_implicit_prompt": "implicit_prompt"}.get(
        name, "prompt_chosen_rejected")


def test_system_prompt_is_added_to_prompts_without_one(prep, tmp_path, all_rows_train):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": [USER], "chosen": [GOOD], "rejected": [BAD]}])
    prep(path, task="preference", system_prompt="Be kind.", **all_rows_train)
    assert prep.rows()[0]["prompt"] == [{"role": "system", "content": "Be kind."}, USER]


CASES = [  # (id, row, kind, field, reason)
    ("empty_chosen", {"prompt": [USER], "chosen": "  ", "rejected": [BAD]}, "missing_content", "chosen",
     "the answer is empty"),
    ("empty_rejected_message", {"prompt": [USER], "chosen": [GOOD], "rejected": [{"role": "assistant", "content": ""}]},
     "missing_content", "rejected[0].content", "the assistant message is empty"),
    ("identical", {"prompt": [USER], "chosen": [GOOD], "rejected": [GOOD]}, "identical_pair", "rejected",
     "identical to the chosen one"),
    ("prompt_ends_with_assistant", {"prompt": [USER, GOOD], "chosen": [GOOD], "rejected": [BAD]}, "prompt_not_user",
     "prompt[1].role", "must end with the user turn"),
    ("aoai_prompt_ends_with_system", {"input": {"messages": [SYSTEM]}, "preferred_output": [GOOD],
                                      "non_preferred_output": [BAD]}, "no_user_message", "input.messages",
     "the prompt has no user message"),
    ("user_in_chosen", {"prompt": [USER], "chosen": [USER, GOOD], "rejected": [BAD]}, "completion_role",
     "chosen[0].role", "assistant messages only"),
    ("system_in_rejected", {"prompt": [USER], "chosen": [GOOD], "rejected": [BAD, SYSTEM]}, "misplaced_system",
     "rejected[1].role", "only the first message may be system"),
    ("unknown_role_in_rejected", {"prompt": [USER], "chosen": [GOOD], "rejected": [{"role": "bot", "content": "x"}]},
     "unknown_role", "rejected[0].role", "unknown role 'bot'"),
    ("implicit_user_after_prompt", {"chosen": [USER, GOOD], "rejected": [USER, {"role": "user", "content": "?"}]},
     "completion_role", "rejected[1].role", "must be assistant messages"),
    ("implicit_nothing_shared", {"chosen": [USER, GOOD], "rejected": [{"role": "user", "content": "Hi"}, BAD]},
     "prompt_not_user", "chosen", "share no messages"),
    ("weight_in_answer", {"prompt": [USER], "chosen": [{**GOOD, "weight": 1}], "rejected": [BAD]},
     "unsupported_field", "chosen[0].weight", "weight has no meaning"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_pair_problem_names_file_line_and_field(prep, tmp_path, case):
    _, bad, kind, field, reason = case
    good = [{"prompt": [{"role": "user", "content": f"Q{i}?"}], "chosen": [GOOD], "rejected": [BAD]} for i in range(3)]
    if "input" in bad:
        good = _others()
    elif "prompt" not in bad:
        good = [{"chosen": [{"role": "user", "content": f"Q{i}?"}, GOOD],
                 "rejected": [{"role": "user", "content": f"Q{i}?"}, BAD]} for i in range(3)]
    path = write_jsonl(tmp_path / "bad.jsonl", [*good[:2], bad, good[2]])
    with pytest.raises(UserError) as info:
        prep(path, task="preference")
    message = str(info.value)
    assert f"{kind}: 1 (" in message, message
    assert f"{path} line 3: field {field!r}:" in message, message
    assert reason in message, message


def test_report_counts_chosen_and_rejected_lengths(prep, tmp_path, all_rows_train):
    rows = [{"prompt": f"Q{i}?", "chosen": "a" * (10 + i), "rejected": "b" * 11} for i in range(4)]
    report = prep(write_jsonl(tmp_path / "pairs.jsonl", rows), task="preference", **all_rows_train)
    train = report["preference"]["per_split"]["train"]
    assert report["preference"]["unit"] == "characters"
    assert (train["pairs"], train["chosen_longer"], train["rejected_longer"], train["same_length"]) == (4, 2, 1, 1)
    assert train["chosen_longer_ratio"] == 0.5
    assert train["chosen"]["mean"] == 11.5 and train["rejected"]["mean"] == 11
    assert "| train | 4 | 11.5 |" in (prep.report_dir / "data_report.md").read_text()


def test_report_counts_answer_tokens_with_the_model_tokenizer(prep, tiny_model_dir, all_rows_train):
    report = prep(SAMPLE, task="preference", model_path=tiny_model_dir, **all_rows_train)
    train = report["preference"]["per_split"]["train"]
    assert report["preference"]["unit"] == "tokens"
    assert train["pairs"] == sum(1 for line in SAMPLE.read_text().splitlines() if line.strip())
    # The sample is built to carry no length bias: the chosen answer is the longer one in about half the pairs.
    assert 0.3 < train["chosen_longer_ratio"] < 0.6


def _prompt_key(row: dict) -> str:
    return json.dumps(row["prompt"])


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_pairs_of_one_prompt_stay_in_one_split_and_splits_are_seeded(prep):
    report = prep(SAMPLE, task="preference", validation_ratio=0.2, test_ratio=0.2, seed=3)
    splits = {name: {_prompt_key(r) for r in prep.rows(name)} for name in ("train", "validation", "test")}
    assert not splits["train"] & splits["validation"] and not splits["train"] & splits["test"]
    assert not splits["validation"] & splits["test"]
    assert report["prompt_overlap_with_train"] == {"validation": 0, "test": 0}
    rows_per_prompt = {}
    for row in prep.rows():
        rows_per_prompt[_prompt_key(row)] = rows_per_prompt.get(_prompt_key(row), 0) + 1
    assert max(rows_per_prompt.values()) > 1  # the sample has several pairs per prompt: the grouping matters
    # The ratios count prompts.
    assert len(splits["test"]) == round(0.2 * len(rows_per_prompt))
    first = {name: prep.rows(name) for name in ("train", "validation", "test")}
    prep(SAMPLE, task="preference", validation_ratio=0.2, test_ratio=0.2, seed=3)
    assert {name: prep.rows(name) for name in first} == first


def test_train_pairs_whose_prompt_is_in_the_test_input_are_removed(prep, tmp_path):
    shared = {"prompt": "Q0?", "chosen": "Yes.", "rejected": "No."}
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"prompt": "Q0?", "chosen": "Sure, yes.", "rejected": "Nope."},  # same prompt, other pair
        *({"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(1, 4))])
    test = write_jsonl(tmp_path / "test.jsonl", [shared])
    report = prep(train, task="preference", test_data=test, validation_ratio=0.0)
    assert report["duplicates"]["train_rows_prompt_in_validation_or_test"] == 1
    assert [r["prompt"][0]["content"] for r in prep.rows("train")] == ["Q1?", "Q2?", "Q3?"]
    assert "Train pairs whose prompt is in the validation/test input (removed from train): 1" in (
        prep.report_dir / "data_report.md").read_text()

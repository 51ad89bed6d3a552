"""Data from the wild: a mapping, a column or a split that a user gets wrong fails at Data Prep, naming
file, line, field and the input that fixes it. Rows are our own, in the shapes of public files (Alpaca,
SQuAD, KTO-style feedback, multi-label CSV, OpenAI legacy completions, Parquet with tools)."""

from __future__ import annotations

import json

import pytest

from maap_finetune.common.errors import UserError
from tests.data_prep.conftest import write_jsonl

ALPACA = [{"instruction": f"Name part {i} of the bike.", "input": f"Bike model {i}", "output": f"Part {i}."}
          for i in range(6)]


def _squad(i: int, context: str | None = None) -> dict:
    context = context or f"The shop in town {i} opens at {8 + i % 3} am and sells bikes."
    answer = f"{8 + i % 3} am"
    return {"id": str(i), "title": "Shop", "context": context, "question": f"When does shop {i} open?",
            "answers": {"text": [answer], "answer_start": [context.index(answer)]}}


# 1. a *_key that names no field -----------------------------------------------------------------------
def test_a_mistyped_optional_key_is_refused_at_the_first_row(prep, tmp_path, all_rows_train):
    path = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA)
    with pytest.raises(UserError) as info:
        prep(path, task="instruction", input_key="inputs", **all_rows_train)
    message = str(info.value)
    assert f"{path} line 1: input_key 'inputs' names no field of the data" in message
    assert "fields seen: 'instruction', 'input', 'output'" in message


def test_a_mistyped_context_key_does_not_turn_squad_into_closed_book(prep, tmp_path, all_rows_train):
    path = write_jsonl(tmp_path / "squad.jsonl", [_squad(i) for i in range(4)])
    with pytest.raises(UserError, match=r"line 1: context_key 'contexts' names no field .*'context'"):
        prep(path, task="qa", context_key="contexts", **all_rows_train)


def test_an_optional_field_absent_at_its_default_name_is_reported(prep, tmp_path, all_rows_train, capsys):
    rows = [{"instruction": r["instruction"], "output": r["output"]} for r in ALPACA]
    report = prep(write_jsonl(tmp_path / "alpaca.jsonl", rows), task="instruction", **all_rows_train)
    assert report["absent_optional_fields"] == {"input": "input_key"}
    assert "Optional fields absent from the data" in (prep.report_dir / "data_report.md").read_text()
    assert "input (input_key)" in capsys.readouterr().out


# 2. integer labels without names; missing columns name their *_key -------------------------------------
def test_integer_class_ids_without_label_names_are_refused(prep, tmp_path, all_rows_train):
    path = tmp_path / "emotion.csv"
    path.write_text("text,label\n" + "".join(f"feeling {i},{i % 6}\n" for i in range(12)), encoding="utf-8")
    with pytest.raises(UserError) as info:
        prep(path, task="classification", **all_rows_train)
    message = str(info.value)
    assert f"{path} line 2: field 'label': label '0' is an integer id and label_names is not set" in message
    assert "give label_names" in message


def test_numbers_that_are_the_labels_themselves_are_listed_in_label_names(prep, tmp_path, all_rows_train):
    rows = [{"text": f"review {i}", "label": 1 + i % 5} for i in range(10)]  # star ratings 1..5
    report = prep(write_jsonl(tmp_path / "stars.jsonl", rows), task="classification", label_names="1,2,3,4,5",
                  **all_rows_train)
    assert report["label_counts"]["train"] == {str(n): 2 for n in range(1, 6)}


def test_integer_ner_tags_without_label_names_name_label_names(prep, tmp_path, all_rows_train):
    rows = [{"tokens": ["Tom", "rode"], "ner_tags": [1, 0]}]
    with pytest.raises(UserError, match=r"line 1: field 'ner_tags\[0\]': tag 1 is an integer id .*label_names"):
        prep(write_jsonl(tmp_path / "ner.jsonl", rows), task="ner", **all_rows_train)


def test_a_missing_column_names_the_key_input_that_fixes_it(prep, tmp_path, all_rows_train):
    rows = [{"article": "A long article.", "abstract": "Short."}]
    with pytest.raises(UserError, match=r"missing column\(s\) .*; name the columns with document_key, summary_key"):
        prep(write_jsonl(tmp_path / "sum.jsonl", rows), task="summarization", **all_rows_train)


# 3. text splits by document ------------------------------------------------------------------------------
def test_text_is_split_by_document_before_chunking(prep, tmp_path):
    docs = [{"text": " ".join(f"doc{d}word{w}" for w in range(120))} for d in range(20)]
    report = prep(write_jsonl(tmp_path / "text.jsonl", docs), task="text", max_seq_length=64,
                  validation_ratio=0.2, test_ratio=0.2)
    seen: dict[str, set] = {}
    for split in ("train", "validation", "test"):
        for row in prep.rows(split):
            seen.setdefault(row["text"].split("word")[0].strip(), set()).add(split)
    assert all(len(splits) == 1 for splits in seen.values())  # no document in two splits
    chunking = report["text_chunking"]
    assert chunking["documents"] == {"train": 12, "validation": 4, "test": 4}
    assert chunking["chunks"] == {name: len(prep.rows(name)) for name in ("train", "validation", "test")}
    assert sum(chunking["chunks"].values()) > 20


# 4. and 5. rows that cannot fit, and prompt-side truncation ---------------------------------------------------
def test_rows_too_long_fail_data_prep_with_the_counts(prep, tmp_path, tiny_model_dir, capsys):
    filler = "The shop sells bikes and parts. " * 60
    rows = [_squad(i, filler.replace("bikes", f"bikes{i}") + f"It opens at {8 + i % 3} am.") for i in range(10)]
    path = write_jsonl(tmp_path / "squad.jsonl", rows)
    with pytest.raises(UserError) as info:
        prep(path, task="qa", model_path=tiny_model_dir, max_seq_length=128, truncation="none",
             validation_ratio=0.0, test_ratio=0.0)
    message = str(info.value)
    assert "10 of 10 rows (100.0%) are longer than max_seq_length 128 tokens" in message
    assert "more than max_too_long_ratio 0.05" in message and "set truncation prompt" in message
    assert "10 of 10 rows" in capsys.readouterr().out  # said on the console at once


def test_prompt_truncation_keeps_the_answer_and_cuts_the_context(prep, tmp_path, tiny_model_dir):
    filler = "The shop sells bikes and parts. " * 60
    rows = [_squad(i, filler.replace("bikes", f"bikes{i}") + f"It opens at {8 + i % 3} am.") for i in range(10)]
    report = prep(write_jsonl(tmp_path / "squad.jsonl", rows), task="qa", model_path=tiny_model_dir,
                  max_seq_length=128, validation_ratio=0.0, test_ratio=0.0)
    fit = report["length_fit"]
    assert fit["shortened"]["train"] == 10 and fit["too_long"]["train"] == 0 and fit["tokens_cut"]["train"] > 0
    assert report["lengths"]["per_split"]["train"]["tokens"]["max"] <= 128
    for row in prep.rows("train"):
        user, answer = row["messages"][-2]["content"], row["messages"][-1]["content"]
        assert answer.endswith("am") and answer in user  # the answer is still in the shortened context
    assert "prompts shortened (truncation prompt): train 10" in (prep.report_dir / "data_report.md").read_text()


def test_prompt_truncation_drops_the_oldest_turns_of_a_long_chat(prep, tmp_path, tiny_model_dir):
    turns = []
    for t in range(8):
        turns += [{"role": "user", "content": f"Tell me about wheel {t}. " + "spokes " * 30},
                  {"role": "assistant", "content": f"Wheel {t} is fine. " + "rims " * 20}]
    turns[-1] = {"role": "assistant", "content": "The last answer."}
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, *turns]}]
    report = prep(write_jsonl(tmp_path / "chat.jsonl", rows), model_path=tiny_model_dir, max_seq_length=200,
                  validation_ratio=0.0, test_ratio=0.0)
    messages = prep.rows("train")[0]["messages"]
    assert report["length_fit"]["shortened"]["train"] == 1
    assert messages[0] == {"role": "system", "content": "Be brief."}
    assert messages[1]["role"] == "user" and messages[-1]["content"] == "The last answer."
    assert 3 <= len(messages) < 17


def test_summarization_document_is_cut_not_the_summary(prep, tmp_path, tiny_model_dir):
    rows = [{"document": f"Report {i}. " + "The ride was long and the road was wet. " * 80, "summary": f"Ride {i}."}
            for i in range(5)]
    report = prep(write_jsonl(tmp_path / "sum.jsonl", rows), task="summarization", model_path=tiny_model_dir,
                  max_seq_length=96, validation_ratio=0.0, test_ratio=0.0)
    assert report["length_fit"]["shortened"]["train"] == 5
    assert sorted(r["messages"][-1]["content"] for r in prep.rows()) == [f"Ride {i}." for i in range(5)]


# 6. columns that change meaning ------------------------------------------------------------------------------
def test_a_kto_style_label_column_is_not_dropped_silently(prep, tmp_path, all_rows_train):
    rows = [{"prompt": f"Is frame {i} steel?", "completion": "Yes." if i % 2 else "No idea.", "label": bool(i % 2)}
            for i in range(6)]
    path = write_jsonl(tmp_path / "kto.jsonl", rows)
    with pytest.raises(UserError) as info:
        prep(path, task="instruction", **all_rows_train)
    message = str(info.value)
    assert f"{path} line 1: field 'label' (value False) is not read by task instruction" in message
    assert "rows marked false would be trained as targets" in message and "drop_columns" in message
    report = prep(path, task="instruction", drop_columns="label", **all_rows_train)  # dropped knowingly
    assert report["ignored_columns"] == {"label": 6}


def test_a_multi_label_csv_is_not_made_single_label(prep, tmp_path, all_rows_train):
    path = tmp_path / "toxic.csv"
    path.write_text("id,comment_text,toxic,insult\n" + "".join(
        f"{i},comment {i},{i % 2},{(i // 2) % 2}\n" for i in range(8)), encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: field 'insult' \(value '0'\) .*one more label column"):
        prep(path, task="classification", text_key="comment_text", label_key="toxic", label_names="no,yes",
             **all_rows_train)


def test_other_dropped_columns_are_listed_in_the_report_and_console(prep, tmp_path, all_rows_train, capsys):
    rows = [{**_squad(i), "source_url": f"https://example.org/{i}"} for i in range(4)]
    prep(write_jsonl(tmp_path / "squad.jsonl", rows), task="qa", **all_rows_train)
    markdown = (prep.report_dir / "data_report.md").read_text()
    assert "Columns dropped (not read by the task; rows holding each): id (4), title (4), source_url (4)" in markdown
    assert "Columns dropped" in capsys.readouterr().out


# 8. and issue 21: the .json reader behaves as the .jsonl reader -------------------------------------------------
def test_json_array_error_is_reported_at_its_own_line(prep, tmp_path, all_rows_train):
    text = json.dumps(ALPACA[:2], indent=2)[:-2] + ',\n  {\n    "instruction": "x",\n    "output": oops\n  }\n]'
    path = tmp_path / "alpaca.json"
    path.write_text(text, encoding="utf-8")
    error_line = text.splitlines().index('    "output": oops') + 1
    with pytest.raises(UserError, match=rf"alpaca.json line {error_line}: invalid JSON in item 3"):
        prep(path, task="instruction", **all_rows_train)


def test_deep_nesting_in_json_is_a_problem_not_a_crash(prep, tmp_path, all_rows_train):
    path = tmp_path / "deep.json"
    path.write_text("[" + "[" * 10_000 + "]" * 10_000 + "]", encoding="utf-8")
    with pytest.raises(UserError, match=r"(?s)invalid_json: 1 .*deep.json line 1: invalid JSON in item 1: depth limit exceeded"):
        prep(path, task="instruction", **all_rows_train)


def test_an_item_over_the_size_cap_says_so(prep, tmp_path, all_rows_train, monkeypatch):
    from maap_finetune.data import readers

    monkeypatch.setattr(readers, "_CHUNK_CHARS", 64)
    monkeypatch.setattr(readers, "_MAX_JSON_ITEM_CHARS", 1000)  # stands for 64 MiB
    path = tmp_path / "big.json"
    path.write_text(json.dumps([ALPACA[0], {**ALPACA[1], "output": "x" * 5000}]), encoding="utf-8")
    with pytest.raises(UserError, match=r"item 2 is larger than .* \(the size cap of one .json array item\)"):
        prep(path, task="instruction", **all_rows_train)


@pytest.mark.parametrize("suffix", ["json", "jsonl"])
def test_nan_and_infinity_are_refused_in_json_and_jsonl_alike(prep, tmp_path, all_rows_train, suffix):
    rows = [json.dumps(ALPACA[0]), '{"instruction": "Weight?", "output": "kg", "score": NaN}']
    path = tmp_path / f"rows.{suffix}"
    path.write_text("[" + ",\n".join(rows) + "]" if suffix == "json" else "\n".join(rows) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"line 2: invalid JSON.*NaN and Infinity are not JSON numbers"):
        prep(path, task="instruction", **all_rows_train)


def test_a_label_seen_only_outside_train_is_an_error_naming_its_rows(prep, tmp_path):
    path = tmp_path / "truncated.csv"
    path.write_text("text,label\n" + "".join(f"ride {i},{'sales' if i % 2 else 'support'}\n" for i in range(20))
                    + "half a row,sal\n", encoding="utf-8")
    with pytest.raises(UserError) as info:
        prep(path, task="classification", validation_ratio=0.5, test_ratio=0.0, seed=3)
    assert f"'sal' (1 row(s): {path} line 22)" in str(info.value)


def test_a_nul_character_is_refused_naming_the_line(prep, tmp_path, all_rows_train):
    rows = [*ALPACA[:2], {"instruction": "Size?", "output": "M\u0000L"}]
    with pytest.raises(UserError, match=r"(?s)nul_character: 1 .*line 3: field 'output': the text holds a NUL"):
        prep(write_jsonl(tmp_path / "alpaca.jsonl", rows), task="instruction", **all_rows_train)


# 9. Parquet's null struct fields ------------------------------------------------------------------------------
def test_parquet_tools_lose_arrow_null_fields_like_json_rows(prep, tmp_path, all_rows_train):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def row(name: str, arg: str, value: str) -> dict:
        return {"messages": [
            {"role": "user", "content": f"Call {name}."},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": f"c_{name}", "type": "function",
                 "function": {"name": name, "arguments": json.dumps({arg: value})}}]},
            {"role": "tool", "tool_call_id": f"c_{name}", "content": "done"},
            {"role": "assistant", "content": "Done."}],
            "tools": [{"type": "function", "function": {"name": name, "parameters": {
                "type": "object", "properties": {arg: {"type": "string"}}}}}]}

    rows = [row("weather", "city", "Oslo"), row("sales", "period", "Q1")]
    path = tmp_path / "tools.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    prep(path, **all_rows_train)
    assert sorted(json.dumps(r, sort_keys=True) for r in prep.rows()) == \
        sorted(json.dumps(r, sort_keys=True) for r in rows)


# 10. end-of-text markers in targets -------------------------------------------------------------------------------
def test_legacy_completions_lose_their_trailing_end_of_text_marker(prep, tmp_path, all_rows_train):
    rows = [{"prompt": f"Frame size for {150 + i} cm ->", "completion": f" Size {i}.<|endoftext|>"} for i in range(4)]
    report = prep(write_jsonl(tmp_path / "legacy.jsonl", rows), task="instruction", **all_rows_train)
    assert sorted(r["messages"][-1]["content"] for r in prep.rows()) == [f" Size {i}." for i in range(4)]
    assert report["end_markers_stripped"] == 4


def test_an_end_of_text_marker_inside_a_target_is_refused(prep, tmp_path, all_rows_train):
    rows = [{"prompt": "Two answers?", "completion": "One.<|endoftext|>Two."}]
    with pytest.raises(UserError, match=r"line 1: field 'completion': the target holds the end-of-text marker"):
        prep(write_jsonl(tmp_path / "legacy.jsonl", rows), task="instruction", **all_rows_train)

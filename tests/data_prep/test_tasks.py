"""Every task and layout is normalized into the contract: messages ending with the assistant turn, or text."""

from __future__ import annotations

import json

import pytest

from maap_finetune.data.prepared import load_prepared
from tests.data_prep.conftest import write_jsonl
from tests.helpers import REPO_ROOT

SAMPLES = REPO_ROOT / "data" / "sample"


def _only(rows):
    assert len(rows) == 1
    return rows[0]["messages"]


def test_openai_chat_multi_turn_with_name_kept(prep, tmp_path, all_rows_train):
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Hi", "name": "ann"},
                        {"role": "assistant", "content": "Hello."},
                        {"role": "user", "content": [{"type": "text", "text": "Price "}, {"type": "text", "text": "?"}]},
                        {"role": "assistant", "content": "1499 dollars."}], "id": 7}
    report = prep(write_jsonl(tmp_path / "c.jsonl", [row]), **all_rows_train)
    messages = _only(prep.rows())
    assert messages[1] == {"role": "user", "content": "Hi", "name": "ann"}
    assert messages[3]["content"] == "Price ?"  # text parts are joined
    assert messages[-1] == {"role": "assistant", "content": "1499 dollars."}
    assert report["ignored_columns"] == {"id": 1}  # dropped columns are reported


def test_ultrachat_rows(prep, tmp_path, all_rows_train):
    row = {"prompt": "Hi", "prompt_id": "abc", "messages": [{"role": "user", "content": "Hi"},
                                                              {"role": "assistant", "content": "Hello."}]}
    report = prep(write_jsonl(tmp_path / "u.jsonl", [row]), **all_rows_train)
    assert _only(prep.rows()) == row["messages"]
    assert report["layout"] == "openai_messages"
    assert report["ignored_columns"] == {"prompt": 1, "prompt_id": 1}


def test_sharegpt_rows(prep, tmp_path, all_rows_train):
    row = {"id": "x", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                        {"from": "gpt", "value": "Hello."}]}
    report = prep(write_jsonl(tmp_path / "s.jsonl", [row]), **all_rows_train)
    assert _only(prep.rows()) == [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                                  {"role": "assistant", "content": "Hello."}]
    assert report["layout"] == "sharegpt"


def test_messages_key_and_system_prompt_for_chat(prep, tmp_path, all_rows_train):
    rows = [{"dialog": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]},
            {"dialog": [{"role": "system", "content": "Own."}, {"role": "user", "content": "Yo"},
                        {"role": "assistant", "content": "Hey."}]}]
    prep(write_jsonl(tmp_path / "c.jsonl", rows), messages_key="dialog", system_prompt="Be brief.\\nAlways.",
         **all_rows_train)
    systems = sorted(r["messages"][0]["content"] for r in prep.rows())
    assert systems == ["Be brief.\nAlways.", "Own."]  # added only where a conversation has none
    assert prep.metadata()["templates"] == {"system": "Be brief.\nAlways."}


def test_instruction_prompt_completion_layout(prep, tmp_path, all_rows_train):
    rows = [{"prompt": "Say hi", "completion": "Hi!"}]
    report = prep(write_jsonl(tmp_path / "p.jsonl", rows), task="instruction", **all_rows_train)
    assert _only(prep.rows()) == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "Hi!"}]
    assert report["layout"] == "prompt_completion"


def test_instruction_sample_and_template_override(prep, all_rows_train):
    prep(SAMPLES / "instruction.jsonl", task="instruction", prompt_template="Q: {instruction}\\n{input}",
         completion_template="A: {output}", system_prompt="You sell bikes.", **all_rows_train)
    rows = prep.rows()
    assert len(rows) == 30
    first = rows[0]["messages"]
    assert first[0] == {"role": "system", "content": "You sell bikes."}
    assert first[1]["content"].startswith("Q: ") and first[2]["content"].startswith("A: ")
    templates = prep.metadata()["templates"]
    assert templates["prompt"] == templates["prompt_with_input"] == "Q: {instruction}\n{input}"
    assert templates["completion"] == "A: {output}"


def test_classification_label_set_and_prompt(prep):
    prep(SAMPLES / "classification.csv", task="classification")
    data = load_prepared(prep.prepared)
    assert data.label_set == ["billing", "repair", "sales"]
    assert sum(data.split_rows.values()) == 36
    for row in data.rows("train"):
        user, assistant = row["messages"]
        assert "billing, repair, sales" in user["content"]
        assert assistant["content"] in data.label_set
    counts = prep.report["label_counts"]
    assert {label: sum(counts[s][label] for s in counts) for label in data.label_set} == \
        {"billing": 12, "repair": 12, "sales": 12}
    assert {s: sum(c.values()) for s, c in counts.items()} == data.split_rows
    assert "| billing | " in (prep.report_dir / "data_report.md").read_text()


def test_classification_integer_ids_with_label_names(prep, tmp_path, all_rows_train):
    rows = [{"sentence": "great", "label": 1}, {"sentence": "awful", "label": 0}, {"sentence": "fine", "label": "pos"}]
    prep(write_jsonl(tmp_path / "c.jsonl", rows), task="classification", label_names="neg,pos", **all_rows_train)
    assert prep.metadata()["label_set"] == ["neg", "pos"]
    got = {r["messages"][0]["content"].split("Text: ")[1].split("\n")[0]: r["messages"][-1]["content"]
           for r in prep.rows()}
    assert got == {"great": "pos", "awful": "neg", "fine": "pos"}


def test_ner_sample_tags_and_entities(prep, all_rows_train):
    prep(SAMPLES / "ner.jsonl", task="ner", **all_rows_train)
    meta = prep.metadata()
    assert meta["label_set"] == ["O", "B-LOC", "B-PER", "I-PER", "B-PROD", "I-PROD"]
    assert meta["entity_types"] == ["LOC", "PER", "PROD"]
    completions = {r["messages"][-1]["content"] for r in prep.rows()}
    assert any(c.startswith("PER: Tom Berg\nPROD: ") for c in completions)


def test_ner_tag_ids_with_label_names_and_no_entities(prep, tmp_path, all_rows_train):
    rows = [{"tokens": ["Anna", "lives", "in", "New", "York"], "tags": [1, 0, 0, 3, 4]},
            {"tokens": ["nothing", "here"], "tags": [0, 0]}]
    prep(write_jsonl(tmp_path / "n.jsonl", rows), task="ner", tag_key="tags",
         label_names='["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]', **all_rows_train)
    completions = sorted(r["messages"][-1]["content"] for r in prep.rows())
    assert completions == ["PER: Anna\nLOC: New York", "none"]
    assert prep.metadata()["label_set"] == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_ner_from_csv_with_space_separated_tokens(prep, tmp_path, all_rows_train):
    path = tmp_path / "n.csv"
    path.write_text('tokens,ner_tags\nTom visits Oslo,"[""B-PER"", ""O"", ""B-LOC""]"\n', encoding="utf-8")
    prep(path, task="ner", **all_rows_train)
    assert _only(prep.rows())[-1]["content"] == "PER: Tom\nLOC: Oslo"


@pytest.mark.parametrize("layout,row,extra", [
    ("hf_translation", {"translation": {"en": "The bike.", "de": "Das Fahrrad."}}, {}),
    ("language_columns", {"en": "The bike.", "de": "Das Fahrrad."}, {}),
    ("source_target", {"src": "The bike.", "tgt": "Das Fahrrad."}, {"source_key": "src", "target_key": "tgt"}),
])
def test_translation_layouts(prep, tmp_path, layout, row, extra, all_rows_train):
    report = prep(write_jsonl(tmp_path / "t.jsonl", [row]), task="translation", source_lang="en", target_lang="de",
                  **extra, **all_rows_train)
    assert report["layout"] == layout
    assert _only(prep.rows()) == [
        {"role": "user", "content": "Translate the following text from en to de.\n\nThe bike."},
        {"role": "assistant", "content": "Das Fahrrad."}]
    assert prep.metadata()["languages"] == {"source": "en", "target": "de"}


def test_qa_extractive_sample(prep):
    prep(SAMPLES / "qa.jsonl", task="qa")
    for row in prep.rows():
        user, assistant = row["messages"]
        assert assistant["content"] in user["content"].split("Question:")[0]


def test_qa_squad_json_answer_list_and_closed_book(prep, tmp_path, all_rows_train):
    squad = [{"context": "Frames carry a lifetime warranty.", "question": "How long?",
              "answers": [{"text": "lifetime", "answer_start": 15}]}]
    prep(write_jsonl(tmp_path / "q.jsonl", squad), task="qa", **all_rows_train)
    assert _only(prep.rows())[-1]["content"] == "lifetime"
    closed = [{"question": "Capital of France?", "answer": "Paris"}]
    report = prep(write_jsonl(tmp_path / "cb.jsonl", closed), task="qa", **all_rows_train)
    assert report["layout"] == "closed_book"
    assert _only(prep.rows()) == [{"role": "user", "content": "Capital of France?"},
                                  {"role": "assistant", "content": "Paris"}]


def test_summarization_sample_with_custom_keys(prep, tmp_path, all_rows_train):
    prep(SAMPLES / "summarization.jsonl", task="summarization", **all_rows_train)
    assert len(prep.rows()) == 18
    rows = [{"article": "Long text here.", "highlights": "Short."}]
    prep(write_jsonl(tmp_path / "s.jsonl", rows), task="summarization", **all_rows_train)
    assert _only(prep.rows())[-1]["content"] == "Short."
    rows = [{"body": "Long text here.", "tldr": "Short."}]
    prep(write_jsonl(tmp_path / "s2.jsonl", rows), task="summarization", document_key="body", summary_key="tldr",
         **all_rows_train)
    assert _only(prep.rows())[0]["content"] == "Summarize the following document.\n\nLong text here."


def test_text_is_chunked_by_characters_without_tokenizer(prep, tmp_path, all_rows_train):
    words = " ".join(f"word{i}" for i in range(200))  # ~1,400 characters
    report = prep(write_jsonl(tmp_path / "t.jsonl", [{"text": words}]), task="text", max_seq_length=64,
                  **all_rows_train)
    chunks = [r["text"] for r in prep.rows()]
    assert all(len(c) <= 64 * 4 for c in chunks) and len(chunks) >= 5
    assert "".join(chunks) == words  # nothing lost, nothing added
    assert prep.metadata()["format"] == "text"
    assert report["text_chunking"]["max_per_chunk"] == 256


def test_text_is_chunked_by_tokens_with_tokenizer(prep, tmp_path, tiny_model_dir, all_rows_train):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = " ".join(f"The bike number {i} has a steel frame." for i in range(60))
    prep(write_jsonl(tmp_path / "t.jsonl", [{"content": text}]), task="text", max_seq_length=32,
         model_path=tiny_model_dir, **all_rows_train)
    chunks = [r["text"] for r in prep.rows()]
    assert len(chunks) > 1 and "".join(chunks) == text
    limit = 32 - tokenizer.num_special_tokens_to_add(pair=False)
    # Re-tokenizing a piece may merge across its edges: allow one token of slack.
    assert max(len(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in chunks) <= limit + 1


def test_ner_completions_parse_back_into_entities(prep, all_rows_train):
    """Evaluate reads entities back with the recorded templates: rendering and parsing are inverse."""
    from maap_finetune.data.prepared import parse_entities, prompt_and_reference
    from maap_finetune.data.tasks import ner_entities

    prep(SAMPLES / "ner.jsonl", task="ner", **all_rows_train)
    data = load_prepared(prep.prepared)
    by_text = {}
    for line in (SAMPLES / "ner.jsonl").read_text(encoding="utf-8").splitlines():
        source = json.loads(line)
        by_text[" ".join(source["tokens"])] = ner_entities({"tokens": source["tokens"], "tags": source["ner_tags"]})
    checked = 0
    for row in data.rows("train"):
        prompt, reference = prompt_and_reference(row)
        text = prompt[-1]["content"].split("Text: ", 1)[1]
        assert parse_entities(reference, data.templates) == by_text[text]
        checked += 1
    assert checked == data.split_rows["train"] > 0
    custom = {"entity": "{text} ({type})", "entity_separator": "; ", "no_entities": "-"}
    assert parse_entities("Tom (PER); Oslo (LOC)", custom) == [("PER", "Tom"), ("LOC", "Oslo")]
    assert parse_entities("-", custom) == []


def test_templates_file_overrides_and_inputs_override_it(prep, tmp_path, all_rows_train):
    templates = tmp_path / "templates.yaml"
    templates.write_text(
        "classification:\n"
        "  system: \"You're a support triage bot; it's $5 'quoted'.\"\n"
        "  prompt: \"Which of {labels} fits?\\n{text}\"\n"
        "  completion: \"Label: {label}\"\n", encoding="utf-8")
    prep(SAMPLES / "classification.csv", task="classification", templates_file=templates,
         completion_template="{label}", **all_rows_train)
    system, user, assistant = prep.rows()[0]["messages"]
    assert system == {"role": "system", "content": "You're a support triage bot; it's $5 'quoted'."}
    assert user["content"].startswith("Which of billing, repair, sales fits?\n")
    assert assistant["content"] in ("billing", "repair", "sales")  # the input beats the file
    assert prep.metadata()["templates"]["prompt"] == "Which of {labels} fits?\n{text}"


def test_templates_file_for_chat_sets_the_system_prompt(prep, tmp_path, all_rows_train):
    templates = tmp_path / "t.yaml"
    templates.write_text("system: \"Don't guess.\"\n", encoding="utf-8")
    prep(write_jsonl(tmp_path / "c.jsonl", [{"messages": [{"role": "user", "content": "Hi"},
                                                         {"role": "assistant", "content": "Yo"}]}]),
         templates_file=templates, **all_rows_train)
    assert prep.rows()[0]["messages"][0] == {"role": "system", "content": "Don't guess."}


def test_templates_file_with_unknown_keys_is_a_config_error(prep, tmp_path):
    from maap_finetune.common.errors import UserError

    templates = tmp_path / "t.yaml"
    templates.write_text("promt: \"{text}\"\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"unknown template\(s\) promt for task classification"):
        prep(SAMPLES / "classification.csv", task="classification", templates_file=templates)

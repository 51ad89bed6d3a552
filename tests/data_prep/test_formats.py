"""Every file format gives the same prepared rows: JSONL, JSON array, CSV, TSV, Parquet, gzip, shards."""

from __future__ import annotations

import csv
import gzip
import json

import pytest

from tests.data_prep.conftest import chat_row, write_jsonl

ALPACA = [
    {"instruction": f"Name bike {i}.", "input": "" if i % 2 else f"Context {i}, with a comma", "output": f"Bike {i}."}
    for i in range(8)
]


def _write(path, rows, fmt):
    if fmt in ("jsonl", "jsonl.gz"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    elif fmt in ("json", "json.gz"):
        text = json.dumps(rows, indent=2, ensure_ascii=False)
    elif fmt in ("csv", "tsv", "csv.gz"):
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), delimiter="\t" if fmt == "tsv" else ",")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    else:
        raise ValueError(fmt)
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if fmt.endswith(".gz") else data)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "jsonl.gz", "json", "json.gz", "csv", "csv.gz", "tsv", "parquet"])
def test_every_format_gives_the_same_rows(prep, tmp_path, fmt, all_rows_train):
    reference = _write(tmp_path / "ref.jsonl", ALPACA, "jsonl")
    prep(reference, task="instruction", **all_rows_train)
    expected = prep.rows("train")
    source = _write(tmp_path / f"data.{fmt}", ALPACA, fmt)
    report = prep(source, task="instruction", **all_rows_train)
    assert prep.rows("train") == expected
    assert report["rows"]["read"] == len(ALPACA)
    assert prep.metadata()["source"]["inputs"]["train_data"]["files"][0]["format"] == fmt
    with_input = [r for r in expected if "Input:" in r["messages"][0]["content"]]
    assert len(with_input) == 4  # the Alpaca input goes into the prompt with its own template


@pytest.mark.parametrize("fmt", ["json", "parquet", "jsonl.gz"])
def test_chat_rows_in_structured_formats(prep, tmp_path, fmt, all_rows_train):
    rows = [chat_row(i) for i in range(6)]
    prep(_write(tmp_path / f"chat.{fmt}", rows, fmt), **all_rows_train)
    assert sorted(prep.rows("train"), key=json.dumps) == sorted(rows, key=json.dumps)


def test_chat_messages_json_encoded_in_csv(prep, tmp_path, all_rows_train):
    rows = [{"messages": json.dumps(chat_row(i)["messages"])} for i in range(4)]
    prep(_write(tmp_path / "chat.csv", rows, "csv"), **all_rows_train)
    assert sorted(prep.rows("train"), key=json.dumps) == sorted([chat_row(i) for i in range(4)], key=json.dumps)


def test_bom_crlf_and_blank_lines_are_tolerated(prep, tmp_path, all_rows_train):
    lines = [json.dumps(chat_row(i)) for i in range(5)]
    text = "\r\n".join(lines[:2]) + "\r\n\r\n   \r\n" + "\r\n".join(lines[2:]) + "\r\n\r\n"
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    report = prep(path, **all_rows_train)
    assert report["rows"]["read"] == 5 and report["rows"]["rejected"] == 0
    assert len(prep.rows("train")) == 5


def test_csv_with_bom_and_crlf(prep, tmp_path, all_rows_train):
    path = tmp_path / "data.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\r\n\"Hello, world\",greeting\r\n\r\nBye now,farewell\r\n")
    prep(path, task="classification", **all_rows_train)
    assert prep.metadata()["label_set"] == ["farewell", "greeting"]
    assert {r["messages"][-1]["content"] for r in prep.rows("train")} == {"greeting", "farewell"}


def test_json_lines_written_under_a_json_name(prep, tmp_path, all_rows_train):
    """`datasets.Dataset.to_json` writes JSON Lines to a .json file; that works too."""
    path = write_jsonl(tmp_path / "data.json", [chat_row(i) for i in range(3)])
    prep(path, **all_rows_train)
    assert len(prep.rows("train")) == 3


@pytest.mark.slow  # measured over 2 s: the fast tier keeps make test under 4 minutes
def test_large_json_array_is_read_item_by_item(prep, tmp_path, monkeypatch, all_rows_train):
    """A JSON array is parsed incrementally: items straddle the read chunks and still parse."""
    from maap_finetune.data import readers

    monkeypatch.setattr(readers, "_CHUNK_CHARS", 64)  # force many chunk boundaries
    rows = [chat_row(i, system=i % 2 == 0) for i in range(40)]
    path = tmp_path / "big.json"
    path.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    report = prep(path, **all_rows_train)
    assert report["rows"]["read"] == 40
    assert sorted(prep.rows("train"), key=json.dumps) == sorted(rows, key=json.dumps)


def test_folder_of_shards_in_mixed_formats(prep, tmp_path, all_rows_train):
    folder = tmp_path / "shards"
    (folder / "part").mkdir(parents=True)
    _write(folder / "part-0.jsonl", ALPACA[:3], "jsonl")
    _write(folder / "part" / "part-1.csv.gz", ALPACA[3:6], "csv.gz")
    _write(folder / "part-2.parquet", ALPACA[6:], "parquet")
    (folder / "_SUCCESS").write_text("")
    (folder / "README.txt").write_text("not data")
    report = prep(folder, task="instruction", **all_rows_train)
    assert report["rows"]["read"] == len(ALPACA)
    assert len(prep.rows("train")) == len(ALPACA)
    info = prep.metadata()["source"]["inputs"]["train_folder"]
    assert [f["rows_read"] for f in info["files"]] == [3, 3, 2]
    assert sorted(info["ignored_files"]) == ["README.txt", "_SUCCESS"]


def test_folder_without_data_files_is_a_user_error(prep, tmp_path):
    from maap_finetune.common.errors import UserError

    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"no data files .*found: notes.txt"):
        prep(folder)


def test_unsupported_file_type_is_a_user_error(prep, tmp_path):
    from maap_finetune.common.errors import UserError

    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    with pytest.raises(UserError, match="unsupported file type"):
        prep(path)

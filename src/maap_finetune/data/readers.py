"""Streaming readers for every supported file format.

Formats: `.jsonl`, `.json` (an array, or JSON Lines under a .json name as `datasets` writes it),
`.csv`, `.tsv`, `.parquet`, each optionally gzip-compressed (`.gz`), and folders of such shards.
UTF-8 with or without BOM, CRLF line ends and blank lines are accepted. Rows are yielded one at
a time (Parquet in record batches), so memory does not grow with the file. Rows that cannot be
decoded are reported to a `Problems` collector with file and line, never dropped silently.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from maap_finetune.common.errors import UserError
from maap_finetune.data.jsonfast import loads
from maap_finetune.data.problems import Problems

FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")
_MAX_JSON_ITEM_CHARS = 64 * 1024 * 1024
_CHUNK_CHARS = 1 << 20
_NON_SPACE = re.compile(r"[^ \t\n\r]")  # JSON's whitespace


@dataclass(frozen=True)
class DataFile:
    path: Path
    display: str  # the name used in problems and reports
    format: str  # one of FORMATS
    gzipped: bool

    @property
    def tabular_text(self) -> bool:
        """CSV/TSV cells are strings: structured values arrive JSON-encoded."""
        return self.format in ("csv", "tsv")


def detect_format(path: Path) -> tuple[str, bool] | None:
    """(format, gzipped) from the file name, or None for an unsupported name."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    if not suffixes:
        return None
    fmt = suffixes[-1].lstrip(".")
    return (fmt, gzipped) if fmt in FORMATS else None


def discover(path: str | Path, input_name: str) -> tuple[list[DataFile], list[str]]:
    """The data files of an input (a file, or a folder searched recursively) and the ignored names."""
    root = Path(path)
    if root.is_file():
        detected = detect_format(root)
        if detected is None:
            raise UserError(
                f"{input_name} {root}: unsupported file type; expected one of "
                ".jsonl, .json, .csv, .tsv, .parquet (optionally .gz)"
            )
        return [DataFile(root, str(root), *detected)], []
    if not root.is_dir():
        raise UserError(f"{input_name} {root}: no such file or folder")
    files: list[DataFile] = []
    ignored: list[str] = []
    for candidate in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = candidate.relative_to(root)
        if any(part.startswith((".", "_")) for part in rel.parts):
            ignored.append(str(rel))  # hidden files and markers such as _SUCCESS
            continue
        detected = detect_format(candidate)
        if detected is None:
            ignored.append(str(rel))
            continue
        files.append(DataFile(candidate, str(Path(root.name) / rel), *detected))
    if not files:
        shown = ", ".join(ignored[:10]) or "nothing"
        raise UserError(
            f"{input_name} {root}: no data files (.jsonl, .json, .csv, .tsv, .parquet, optionally .gz) "
            f"in the folder (found: {shown})"
        )
    return files, ignored


def _open_binary(data_file: DataFile):
    return gzip.open(data_file.path, "rb") if data_file.gzipped else open(data_file.path, "rb")


def iter_rows(data_file: DataFile, problems: Problems) -> Iterator[tuple[int, object]]:
    """Yield (line or row number, decoded row) for every row; undecodable rows go to `problems`."""
    reader = {
        "jsonl": _iter_jsonl,
        "json": _iter_json,
        "csv": _iter_delimited,
        "tsv": _iter_delimited,
        "parquet": _iter_parquet,
    }[data_file.format]
    try:
        yield from reader(data_file, problems)
    except (OSError, EOFError, gzip.BadGzipFile) as err:
        problems.add(data_file.display, None, None, "unreadable_file", f"cannot read the file: {err}")


def _iter_jsonl(data_file: DataFile, problems: Problems, handle=None) -> Iterator[tuple[int, object]]:
    display = data_file.display
    with handle or _open_binary(data_file) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            line = raw.strip()
            if not line:
                continue
            try:
                yield lineno, loads(line)
            except ValueError as err:
                try:
                    line.decode("utf-8")
                except UnicodeDecodeError as uerr:
                    problems.add(
                        display, lineno, None, "not_utf8",
                        f"invalid UTF-8 byte 0x{line[uerr.start]:02x} at column {uerr.start + 1}",
                    )
                    continue
                problems.add(display, lineno, None, "invalid_json", f"invalid JSON: {_json_reason(str(err), line)}")


def _iter_json(data_file: DataFile, problems: Problems) -> Iterator[tuple[int, object]]:
    """A JSON array, parsed item by item with bounded memory; JSON Lines under a .json name also work."""
    display = data_file.display
    binary = _open_binary(data_file)
    head = binary.peek(64)[:64] if hasattr(binary, "peek") else b""
    first = head.lstrip(codecs.BOM_UTF8).lstrip()[:1]
    if first == b"{":  # JSON Lines written with a .json name (datasets' to_json does this)
        yield from _iter_jsonl(data_file, problems, handle=binary)
        return
    decoder = json.JSONDecoder(parse_constant=_refuse_constant)  # NaN/Infinity are refused, as in .jsonl
    text = io.TextIOWrapper(binary, encoding="utf-8-sig", errors="strict", newline="")
    with text:
        state = {"buf": "", "pos": 0, "line": 1, "eof": False}

        def fill() -> bool:
            if state["eof"]:
                return False
            try:
                chunk = text.read(_CHUNK_CHARS)
            except UnicodeDecodeError as err:
                problems.add(
                    display, state["line"], None, "not_utf8",
                    f"invalid UTF-8 byte 0x{err.object[err.start]:02x} near line {state['line']}; "
                    "the rest of this file cannot be read",
                )
                state["eof"] = True
                raise _StopFile from None
            if not chunk:
                state["eof"] = True
                return False
            state["buf"] = state["buf"][state["pos"]:] + chunk
            state["pos"] = 0
            return True

        def advance(new_pos: int) -> None:
            state["line"] += state["buf"].count("\n", state["pos"], new_pos)
            state["pos"] = new_pos

        def next_char() -> str:
            """Skip whitespace; return the next character ('' at the end of the file)."""
            while True:
                buf = state["buf"]
                found = _NON_SPACE.search(buf, state["pos"])
                if found is not None:
                    advance(found.start())
                    return buf[found.start()]
                advance(len(buf))
                if not fill():
                    return ""

        try:
            char = next_char()
            if char == "":
                return
            if char != "[":
                problems.add(display, state["line"], None, "invalid_json",
                             f"expected a JSON array of objects (or JSON Lines), found {char!r}")
                return
            advance(state["pos"] + 1)
            item = 0
            expect_item = True
            while True:
                char = next_char()
                if char == "":
                    problems.add(display, state["line"], None, "invalid_json", "the JSON array is not closed")
                    return
                if char == "]" and (item == 0 or not expect_item):
                    return
                if not expect_item:
                    if char != ",":
                        problems.add(display, state["line"], None, "invalid_json",
                                     f"expected ',' or ']' after item {item}, found {char!r}; "
                                     "the rest of this file cannot be read")
                        return
                    advance(state["pos"] + 1)
                    expect_item = True
                    continue
                start_line = state["line"]
                while True:
                    try:
                        obj, end = decoder.raw_decode(state["buf"], state["pos"])
                        break
                    except (json.JSONDecodeError, _ConstantError, RecursionError) as err:
                        truncated = isinstance(err, json.JSONDecodeError) and (
                            err.pos >= len(state["buf"]) - 16 or err.msg.startswith("Unterminated string"))
                        if truncated and len(state["buf"]) - state["pos"] > _MAX_JSON_ITEM_CHARS:
                            problems.add(display, start_line, None, "invalid_json",
                                         f"item {item + 1} is larger than {_MAX_JSON_ITEM_CHARS >> 20} MiB (the size "
                                         "cap of one .json array item); split the file or write it as .jsonl; "
                                         "the rest of this file cannot be read")
                            return
                        if truncated and fill():
                            continue  # the item goes on in the next chunk
                        if isinstance(err, json.JSONDecodeError):
                            # The line of the error itself, not of the item's first line.
                            line = state["line"] + state["buf"].count("\n", state["pos"], err.pos)
                            reason = _json_reason(err.msg, state["buf"][err.pos:err.pos + 16])
                        elif isinstance(err, RecursionError):
                            line, reason = start_line, "depth limit exceeded (nested too deep)"
                        else:
                            line, reason = start_line, _json_reason("", err.args[0])
                        problems.add(display, line, None, "invalid_json",
                                     f"invalid JSON in item {item + 1}: {reason}; the rest of this file cannot be read")
                        return
                item += 1
                advance(end)
                expect_item = False
                yield start_line, obj
        except _StopFile:
            return


class _StopFile(Exception):
    pass


class _ConstantError(ValueError):
    pass


def _refuse_constant(name: str):
    raise _ConstantError(name)


_CONSTANTS = re.compile(r"-?\b(?:NaN|Infinity)\b")


def _json_reason(message: str, text: str | bytes) -> str:
    """The decoder's message, made plain where NaN or Infinity caused it (the same in .json and .jsonl)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if _CONSTANTS.search(text):
        return "NaN and Infinity are not JSON numbers; write null or a number"
    return message


def _iter_delimited(data_file: DataFile, problems: Problems) -> Iterator[tuple[int, object]]:
    display = data_file.display
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    delimiter = "\t" if data_file.format == "tsv" else ","
    binary = _open_binary(data_file)
    # surrogateescape keeps reading past bad bytes; each cell is checked below and reported.
    with io.TextIOWrapper(binary, encoding="utf-8-sig", errors="surrogateescape", newline="") as text:
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            problems.add(display, 1, None, "malformed_row", f"cannot parse the header: {err}")
            return
        header = [h.strip() for h in header]
        for index, name in enumerate(header):
            if _has_surrogates(name):
                problems.add(display, 1, f"column {index + 1}", "not_utf8", "the header has invalid UTF-8 bytes")
                return
        width = len(header)
        previous_end = reader.line_num
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                problems.add(display, reader.line_num, None, "malformed_row", f"cannot parse the row: {err}")
                previous_end = reader.line_num
                continue
            lineno = previous_end + 1
            previous_end = reader.line_num
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line
            if len(cells) != width:
                problems.add(display, lineno, None, "malformed_row",
                             f"the row has {len(cells)} fields, the header has {width}")
                continue
            bad = next((i for i, cell in enumerate(cells) if _has_surrogates(cell)), None)
            if bad is not None:
                problems.add(display, lineno, header[bad], "not_utf8", "the value has invalid UTF-8 bytes")
                continue
            yield lineno, dict(zip(header, cells))


def _has_surrogates(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _drop_nulls(value):
    """Nested values without the null fields Arrow adds: a struct column has every field any row has, so
    one row's tool parameters gain the others' properties as `"period": null`, and every message gains
    `tool_calls: null`. JSON rows never carry those, so they are dropped at every depth below the column."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _iter_parquet(data_file: DataFile, problems: Problems) -> Iterator[tuple[int, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    handle = gzip.open(data_file.path, "rb") if data_file.gzipped else None
    try:
        parquet = pq.ParquetFile(handle or data_file.path)
        row = 0
        for batch in parquet.iter_batches(batch_size=4096):
            for record in batch.to_pylist():
                row += 1
                yield row, {k: _drop_nulls(v) if isinstance(v, (dict, list)) else v for k, v in record.items()}
    except (pa.ArrowException, ValueError) as err:
        problems.add(data_file.display, None, None, "unreadable_file", f"cannot read the Parquet file: {err}")
    finally:
        if handle is not None:
            handle.close()

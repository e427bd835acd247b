"""Read prompt records from local JSONL, Parquet and CSV files, with errors that name the file, line and field.

Every file is decoded line by line, so a bad byte is reported on its own line and (``on_error=skip``) costs only
that line. A JSON line is rejected, naming its line, when it is nested too deeply to parse, repeats a key in one
object (json.loads would keep the last value silently) or holds a lone surrogate (a ``\\ud800`` escape without
its pair: not text, it cannot be encoded to UTF-8 and breaks tokenizers). ``text_field`` is the one check of a
text field's value for the prompt and SFT datasets."""
from __future__ import annotations

import csv
import json
import math
import os
import re
from typing import Any, Iterator

PARQUET_MAGIC = b"PAR1"  # a Parquet file starts and ends with these bytes
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # only such an escape can put a surrogate in a JSON string


class DataError(ValueError):
    """Bad prompt data: the message names the file, the line (1-based; the row for Parquet; None for the whole
    file) and the field. ``kind`` is the stats key the datasets count it under with ``on_error=skip``."""

    def __init__(self, path: str, line: int | None, problem: str, field: str | None = None,
                 kind: str = "malformed"):
        where = path + (f":{line}" if line is not None else "") + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field, self.kind = path, line, field, kind


def value_kind(value: Any) -> str:
    """A value's type as error messages name it."""
    return "null" if value is None else type(value).__name__


def text_field(path: str, line: int, record: dict[str, Any], field: str, required: bool = True) -> str | None:
    """The record's ``field`` as text: a string, or a finite number as its text (``72`` -> ``"72"``).
    Missing or null: None, or a DataError (kind ``missing_field``) when ``required``; any other type, or NaN or
    infinity: a DataError (kind ``bad_field``)."""
    value = record.get(field)
    if value is None:
        if required:
            raise DataError(path, line, "missing (or null)", field, "missing_field")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataError(path, line, f"expected a string, got {value_kind(value)}", field, "bad_field")
    if not math.isfinite(value):
        raise DataError(path, line, f"expected a string or a finite number, got {value!r}", field, "bad_field")
    return str(value)


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(line number, record) per non-blank line; a malformed line yields a DataError instead of a record
    (the caller decides whether to raise or count it) and reading goes on with the next line."""
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            line = _decode_line(path, line_no, raw)
            if isinstance(line, DataError):
                yield line_no, line
            elif line.strip():
                yield line_no, _parse_json_object(path, line_no, line)


def _decode_line(path: str, line_no: int, raw: bytes) -> str | DataError:
    try:
        return raw.decode("utf-8-sig" if line_no == 1 else "utf-8")  # a byte-order mark is dropped
    except UnicodeDecodeError as e:
        return DataError(path, line_no, f"not valid UTF-8 at byte {e.start + 1} of the line ({e.reason})")


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return record


def _parse_json_object(path: str, line_no: int, line: str) -> dict[str, Any] | DataError:
    try:
        record = json.loads(line, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as e:
        return DataError(path, line_no, f"malformed JSON at column {e.colno}: {e.msg}")
    except _DuplicateKey as e:
        return DataError(path, line_no, "the key appears twice in one JSON object (which value is meant?)", e.key)
    except RecursionError:
        return DataError(path, line_no, "JSON nested too deeply to read")
    if not isinstance(record, dict):
        return DataError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    if _SURROGATE_ESCAPE.search(line):  # escaped pairs (emoji) decode to one character; only lone halves remain
        field = _field_with_surrogate(record)
        if field is not None:
            return DataError(path, line_no, "holds a lone surrogate (a \\ud800-\\udfff escape without its pair), "
                             "which is not text", field)
    return record


def _field_with_surrogate(record: dict[str, Any]) -> str | None:
    """The first top-level key whose name or value (at any depth) holds a lone surrogate; None if none does.
    Iterative: the record may be nested as deeply as json.loads allows."""
    for key, value in record.items():
        stack = [key, value]
        while stack:
            item = stack.pop()
            if isinstance(item, str) and _SURROGATE.search(item):
                return key
            if isinstance(item, dict):
                stack.extend(item.keys())
                stack.extend(item.values())
            elif isinstance(item, list):
                stack.extend(item)
    return None


def read_parquet(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(row number, record) per row, 1-based; row numbers stand in for line numbers in error messages."""
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        head = f.read(len(PARQUET_MAGIC))
        f.seek(max(0, os.path.getsize(path) - len(PARQUET_MAGIC)))
        tail = f.read()
    if head != PARQUET_MAGIC or tail != PARQUET_MAGIC:
        raise DataError(path, None, "not a Parquet file (it does not start and end with the bytes 'PAR1'); JSON "
                                    "lines are read from .jsonl or .json files, CSV from .csv")
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise DataError(path, None, f"cannot read Parquet: {e}") from None
    for row_no, record in enumerate(table.to_pylist(), start=1):
        yield row_no, record


def read_csv(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(line number, record) per row of a CSV file whose first row names the columns; values are strings (an
    empty cell is ""). The line number is the file line the row starts on: csv.reader's ``line_num`` after the
    previous row, since a quoted cell may span lines, which csv.DictReader cannot report.
    Blank lines are skipped; a row with a different number of cells than the header, or with bytes that are not
    UTF-8, is a DataError (reading goes on with the next row)."""
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f))
        header: list[str] | None = None
        start = 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row:
                    continue
                problem = _csv_row_problem(row, header)
                if header is None:
                    header = row
                    if problem:
                        yield line, DataError(path, line, f"{problem} in the header")
                        return
                elif problem:
                    yield line, DataError(path, line, problem)
                else:
                    yield line, dict(zip(header, row))
        except csv.Error as e:
            yield start, DataError(path, start, f"malformed CSV: {e}")


def _csv_row_problem(row: list[str], header: list[str] | None) -> str | None:
    if any(_SURROGATE.search(cell) for cell in row):  # the surrogateescape of _decoded_lines
        return "not valid UTF-8"
    if header is None:
        duplicates = sorted({name for name in row if row.count(name) > 1})
        return f"duplicate column names {duplicates}" if duplicates else None
    if len(row) != len(header):
        return f"{len(row)} cells where the header has {len(header)}"
    return None


def _decoded_lines(f) -> Iterator[str]:
    """The binary file's lines decoded one at a time, line endings kept as csv.reader wants them; a UTF-8
    byte-order mark is dropped. A byte that is not UTF-8 becomes a lone surrogate (surrogateescape), which marks
    its row as bad without ending the reading (a decoding error inside csv.reader would)."""
    for n, raw in enumerate(f):
        yield raw.decode("utf-8-sig" if n == 0 else "utf-8", errors="surrogateescape")


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Dispatch on the extension: .jsonl/.json lines, .parquet or .csv."""
    if os.path.isdir(path):
        raise DataError(path, None, "is a directory, expected a data file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt data file {path!r} does not exist (local files only)")
    if path.endswith((".jsonl", ".json")):
        return read_jsonl(path)
    if path.endswith(".parquet"):
        return read_parquet(path)
    if path.endswith(".csv"):
        return read_csv(path)
    raise ValueError(f"{path}: unknown prompt data format (expected .jsonl, .json lines, .parquet or .csv)")

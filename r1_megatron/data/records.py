"""Read prompt records from local JSONL, Parquet and CSV files, with errors that name the file, line and field."""
from __future__ import annotations

import csv
import json
import os
from typing import Any, Iterator


class DataError(ValueError):
    """Bad prompt data: the message names the file, the line (1-based; the row for Parquet) and the field."""

    def __init__(self, path: str, line: int, problem: str, field: str | None = None):
        where = f"{path}:{line}" + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")
        self.path, self.line, self.field = path, line, field


def read_jsonl(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(line number, record) per non-blank line; a malformed line yields a DataError instead of a record
    (the caller decides whether to raise or count it)."""
    with open(path, encoding="utf-8", errors="strict") as f:
        line_no = 0
        while True:
            line_no += 1
            try:
                line = f.readline()
            except UnicodeDecodeError as e:
                yield line_no, DataError(path, line_no, f"not valid UTF-8 ({e.reason})")
                return  # the reader cannot resynchronise after a decoding error
            if not line:
                return
            if line.strip():
                yield line_no, _parse_json_object(path, line_no, line)


def _parse_json_object(path: str, line_no: int, line: str) -> dict[str, Any] | DataError:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        return DataError(path, line_no, f"malformed JSON at column {e.colno}: {e.msg}")
    if not isinstance(record, dict):
        return DataError(path, line_no, f"expected a JSON object, got {type(record).__name__}")
    return record


def read_parquet(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(row number, record) per row, 1-based; row numbers stand in for line numbers in error messages."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise DataError(path, 0, f"cannot read Parquet: {e}") from None
    for row_no, record in enumerate(table.to_pylist(), start=1):
        yield row_no, record


def read_csv(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """(line number, record) per row of a CSV file whose first row names the columns; values are strings (an
    empty cell is ""). The line number is the file line the row starts on: csv.reader's ``line_num`` after the
    previous row, since a quoted cell may span lines, which csv.DictReader cannot report.
    Blank lines are skipped; a row with a different number of cells than the header is a DataError."""
    with open(path, "rb") as f:
        reader = csv.reader(_decoded_lines(f))
        header: list[str] | None = None
        start = 1
        try:
            for row in reader:
                line, start = start, reader.line_num + 1
                if not row:
                    continue
                if header is None:
                    header = row
                    duplicates = sorted({name for name in row if row.count(name) > 1})
                    if duplicates:
                        yield line, DataError(path, line, f"duplicate column names {duplicates} in the header")
                        return
                elif len(row) != len(header):
                    yield line, DataError(path, line, f"{len(row)} cells where the header has {len(header)}")
                else:
                    yield line, dict(zip(header, row))
        except UnicodeDecodeError as e:
            yield reader.line_num + 1, DataError(path, reader.line_num + 1, f"not valid UTF-8 ({e.reason})")
        except csv.Error as e:
            yield start, DataError(path, start, f"malformed CSV: {e}")


def _decoded_lines(f) -> Iterator[str]:
    """The binary file's lines decoded one at a time (a decoding error then names its own line), line endings
    kept as csv.reader wants them; a UTF-8 byte-order mark is dropped."""
    for n, raw in enumerate(f):
        yield raw.decode("utf-8-sig" if n == 0 else "utf-8")


def read_records(path: str) -> Iterator[tuple[int, dict[str, Any] | DataError]]:
    """Dispatch on the extension: .jsonl/.json lines, .parquet or .csv."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"prompt data file {path!r} does not exist (local files only)")
    if path.endswith((".jsonl", ".json")):
        return read_jsonl(path)
    if path.endswith(".parquet"):
        return read_parquet(path)
    if path.endswith(".csv"):
        return read_csv(path)
    raise ValueError(f"{path}: unknown prompt data format (expected .jsonl, .json lines, .parquet or .csv)")

"""eval/samples.jsonl: every evaluated sample, written as its question completes, so nothing is lost.

The first line is a header, `{"header": {"settings": {...}, "benchmarks": {name: {...}}}}`: the settings that
decide the samples (model, seed, sampling, which questions) and how each benchmark's metrics are computed. Every
further line is one sample (docs/evaluation.md lists its fields). A question's k samples are appended together
and flushed to disk (fsync) before the evaluation moves on, so a killed evaluation loses at most the questions
in flight:

- reopening the file with the same settings resumes: complete questions are kept and skipped, a torn last line
  (the kill hit a write) and the samples of questions with fewer than k samples are dropped;
- reopening it with different settings is refused, naming the first setting that differs: samples drawn under
  other settings must not be mixed into one result.
"""
from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any, Iterable

from r1_megatron.atomic_file import write_text_atomically

QuestionKey = tuple[str, int]  # (benchmark, question index)


class SampleStoreError(ValueError):
    """A samples file that cannot be read or resumed (one line: the file, line and what is wrong)."""


def read_samples(path: str | os.PathLike) -> tuple[dict | None, list[dict]]:
    """(header or None, sample records) of a samples file; a torn last line is left out, any other line that is
    not a JSON object is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such samples file")
    lines = path.read_text(encoding="utf-8").split("\n")
    torn = lines.pop() if lines else ""  # text after the last newline: a line whose write did not finish
    header, records = None, []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _parse(path, number, line)
        if "header" in record:
            if number != 1:
                raise SampleStoreError(f"{path}:{number}: a header line after the first line")
            header = record["header"]
        else:
            records.append(record)
    if torn.strip():
        try:
            records.append(_parse(path, len(lines) + 1, torn))  # a complete last record without its newline
        except SampleStoreError:
            pass
    return header, records


def _parse(path: Path, number: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise SampleStoreError(f"{path}:{number}: not a JSON line ({e.msg})") from None
    if not isinstance(record, dict):
        raise SampleStoreError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def first_difference(old: Any, new: Any, key: str = "") -> str | None:
    """The dotted key of the first place two JSON-like values differ, with both values; None when equal."""
    if isinstance(old, dict) and isinstance(new, dict):
        for name in list(old) + [k for k in new if k not in old]:
            found = first_difference(old.get(name), new.get(name), f"{key}.{name}" if key else name)
            if found:
                return found
        return None
    return None if old == new else f"{key or 'settings'}: {old!r} in the file, {new!r} now"


class SampleStore:
    """Append-only samples of one evaluation; `done(benchmark, question)` says what a resumed run skips."""

    def __init__(self, path: str | os.PathLike, header: dict, samples_per_question: dict[str, int]):
        """samples_per_question: each benchmark's k (a question is complete with that many samples)."""
        self.path, self.header, self.k = Path(path), json.loads(json.dumps(header)), dict(samples_per_question)
        self.records: list[dict] = []
        if self.path.exists():
            self._resume()
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._rewrite()
        self._file = open(self.path, "a", encoding="utf-8")

    def _resume(self) -> None:
        old_header, records = read_samples(self.path)
        if old_header is None:
            raise SampleStoreError(f"{self.path}: not a samples file this evaluation wrote (no header line); use "
                                   "another output directory")
        difference = first_difference(old_header, self.header)
        if difference:
            raise SampleStoreError(f"{self.path}: written with other settings ({difference}); use another output "
                                   "directory, or delete the file to start over")
        counts = collections.Counter(_key(r) for r in records)
        self.records = [r for r in records if counts[_key(r)] == self.k.get(r["benchmark"])]
        if len(self.records) != len(records) or not self.path.read_text(encoding="utf-8").endswith("\n"):
            self._rewrite()  # without the torn line and the samples of unfinished questions

    def _rewrite(self) -> None:
        lines = [json.dumps({"header": self.header})] + [json.dumps(r) for r in self.records]
        write_text_atomically(self.path, "\n".join(lines) + "\n")

    def done(self) -> set[QuestionKey]:
        return {_key(r) for r in self.records}

    def append(self, records: Iterable[dict]) -> None:
        """Write whole questions' samples and make them durable before returning."""
        records = list(records)
        if not records:
            return
        self._file.write("".join(json.dumps(r) + "\n" for r in records))
        self._file.flush()
        os.fsync(self._file.fileno())
        self.records.extend(records)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _key(record: dict) -> QuestionKey:
    return record["benchmark"], record["question"]

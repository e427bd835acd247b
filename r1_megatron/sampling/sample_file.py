"""The output of `r1-megatron sample`, written as it goes and resumable after a kill.

- OUT/samples.jsonl: the kept samples, one SFT-ready record a line (nothing else: `train sft` reads it as it is);
- OUT/ledger.jsonl: a header line `{"header": {"settings": ...}}` (what decides the samples), then one line per
  finished prompt, in prompt order: `{"prompt": i, "drawn", "kept", "rejected", "failed", "scoring_failures"}`.

A round's kept records are appended to samples.jsonl and made durable (fsync) before its prompts' ledger lines
are, so the ledger never counts a record that is not on disk. Reopening with the same settings resumes after the
last prompt in the ledger: samples.jsonl is cut back to the records the ledger counts (a kill between the two
writes leaves records of prompts that will be drawn again), a torn last ledger line is dropped. The rerun draws the
same samples (seeds are per prompt), so the finished file is byte-identical to an uninterrupted run's. Other
settings are refused, naming the first that differs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from r1_megatron.atomic_file import write_text_atomically
from r1_megatron.evaluation.sample_store import SampleStoreError, first_difference, read_samples

SAMPLES_FILE, LEDGER_FILE, SUMMARY_FILE = "samples.jsonl", "ledger.jsonl", "summary.json"


def record_line(record: dict[str, Any]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


class SampleFile:
    """OUT/samples.jsonl and OUT/ledger.jsonl of one run; `prompts` (the ledger lines) says what a resumed run
    skips, `records` holds the kept records so far."""

    def __init__(self, out: str | os.PathLike, header: dict[str, Any]):
        out = Path(out)
        self.samples_path, self.ledger_path = out / SAMPLES_FILE, out / LEDGER_FILE
        self.header = json.loads(json.dumps(header))
        self.records: list[dict[str, Any]] = []
        self.prompts: list[dict[str, Any]] = []
        if self.ledger_path.exists():
            self._resume()
        elif self.samples_path.exists():
            raise SampleStoreError(f"{self.samples_path}: exists without {LEDGER_FILE}, so this command did not "
                                   "write it; use another output directory (out=...)")
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.samples_path, "")
            self._rewrite_ledger()
        self._samples = open(self.samples_path, "a", encoding="utf-8")
        self._ledger = open(self.ledger_path, "a", encoding="utf-8")

    @property
    def done(self) -> int:
        """Prompts finished: 0 .. done - 1."""
        return len(self.prompts)

    def _resume(self) -> None:
        old_header, lines = read_samples(self.ledger_path)
        if old_header is None:
            raise SampleStoreError(f"{self.ledger_path}: no header line, not a ledger this command wrote; use another "
                                   "output directory")
        difference = first_difference(old_header, self.header)
        if difference:
            raise SampleStoreError(f"{self.ledger_path}: written with other settings ({difference}); use another "
                                   "output directory, or delete it to start over")
        for i, line in enumerate(lines):
            if line.get("prompt") != i:
                raise SampleStoreError(f"{self.ledger_path}:{i + 2}: expected prompt {i}, got {line.get('prompt')!r}")
        self.prompts = lines
        kept = sum(line["kept"] for line in lines)
        text = self.samples_path.read_text(encoding="utf-8") if self.samples_path.exists() else ""
        complete = text.split("\n")[:-1]  # the text after the last newline is a torn record of an unfinished prompt
        if len(complete) < kept:
            raise SampleStoreError(f"{self.samples_path}: {len(complete)} records, the ledger counts {kept}; the "
                                   "files do not belong together")
        self.records = [json.loads(line) for line in complete[:kept]]
        if len(complete) != kept or not text.endswith("\n") and text:
            write_text_atomically(self.samples_path, "".join(line + "\n" for line in complete[:kept]))
        if not self.ledger_path.read_text(encoding="utf-8").endswith("\n"):
            self._rewrite_ledger()

    def _rewrite_ledger(self) -> None:
        lines = [{"header": self.header}] + self.prompts
        write_text_atomically(self.ledger_path, "".join(json.dumps(line) + "\n" for line in lines))

    def append(self, finished: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        """Record finished prompts, each (ledger line, its kept records), in prompt order; durable on return."""
        if not finished:
            return
        for line, _ in finished:
            if line["prompt"] != self.done:
                raise ValueError(f"SampleFile.append: prompt {line['prompt']} finished before prompt {self.done}")
            self.prompts.append(line)
        records = [r for _, kept in finished for r in kept]
        _durable(self._samples, "".join(record_line(r) for r in records))
        _durable(self._ledger, "".join(json.dumps(line) + "\n" for line, _ in finished))
        self.records.extend(records)

    def close(self) -> None:
        self._samples.close()
        self._ledger.close()


def _durable(file, text: str) -> None:
    file.write(text)
    file.flush()
    os.fsync(file.fileno())

"""Per-step training metrics: one JSON line per step in RUN_DIR/metrics.jsonl, mirrored to TensorBoard.

File format: each line is `{"step": <int>, "<metric>": <number>, ...}`, steps strictly increasing. Floats are
written by `json` (shortest repr that round-trips, so full precision). Non-finite values are written as the
strings "NaN", "Infinity" and "-Infinity" (strict JSON has no such numbers, and `null` would not say which one
occurred); `read_metrics` turns them back into floats.

Crash safety: every line is flushed as soon as it is written, so a killed process loses at most the line being
written. Resuming from a checkpoint of step N (`resume_step=N`) keeps the lines of steps <= N and drops the rest
(they belong to steps that will be recomputed), so a killed-and-resumed run ends with exactly one line per step;
TensorBoard is told the same through `purge_step`. `log_samples` keeps RUN_DIR/samples.jsonl (a few completions per
step with their prompts and rewards) under the same rules.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

from r1_megatron.atomic_file import write_text_atomically

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"  # what the model wrote: {"step", "prompt", "completion", ...} per line
TENSORBOARD_DIR = "tensorboard"
_STR_TO_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_TB_FLUSH_SECS = 30  # SummaryWriter's default of 120 s loses two minutes of charts on a crash


def metrics_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / METRICS_FILE


def _encode_value(key: str, value: Any) -> int | float | str:
    """A number for JSON: ints stay ints, tensors/NumPy scalars become Python numbers, non-finite become strings."""
    if hasattr(value, "item"):  # torch / NumPy scalar
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"metric {key!r} must be a number, got {type(value).__name__}: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return value


def _decode_value(value: Any) -> Any:
    return _STR_TO_NONFINITE.get(value, value) if isinstance(value, str) else value


def _parse_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not a JSON line ({e.msg})") from None
    if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError(f"{path}:{lineno}: expected an object with an integer 'step', got {line.strip()[:80]!r}")
    return {k: _decode_value(v) for k, v in record.items()}


def _read_lines(path: Path) -> list[tuple[str, dict]]:
    """(raw line, parsed record) for every complete line. A last line without its newline is a write cut short
    by a kill and is dropped; any other unreadable line is an error naming the file and line."""
    text = path.read_text()
    lines = text.split("\n")
    if lines[-1]:
        lines = lines[:-1]  # partial write
    return [(line, _parse_line(path, i, line)) for i, line in enumerate(lines, start=1) if line.strip()]


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """All records of RUN_DIR/metrics.jsonl in file order, non-finite values restored as floats."""
    path = metrics_path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    return [record for _, record in _read_lines(path)]


def _truncate_after(path: Path, resume_step: int) -> int | None:
    """Keep only the lines of steps <= resume_step (rewritten atomically); return the last kept step."""
    kept = [(line, rec) for line, rec in _read_lines(path) if rec["step"] <= resume_step]
    write_text_atomically(path, "".join(line + "\n" for line, _ in kept))
    return max((rec["step"] for _, rec in kept), default=None)


def _tensorboard_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise ImportError(f"MetricsLogger(tensorboard=True) needs the tensorboard package ({e}): "
                          "pip install tensorboard, or pass tensorboard=False") from e
    return SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=_TB_FLUSH_SECS)


def _sample_markdown(sample: Mapping[str, Any]) -> str:
    """TensorBoard renders text as markdown: the texts go in code blocks (so `<think>` and `#` show as written)."""
    fields = ", ".join(f"{k}: {v}" for k, v in sample.items() if k not in ("prompt", "completion"))
    fence = lambda text: "```\n" + str(text).replace("```", "` ` `") + "\n```"  # noqa: E731
    return f"{fields}\n\n{fence(sample.get('prompt', ''))}\n\n{fence(sample.get('completion', ''))}"


class MetricsLogger:
    """Writes one record per training step; construct with enabled=False on every rank but the logging one.

    resume_step=None starts a new run and refuses a run directory that already holds metrics; resume_step=N
    continues a run restored from the checkpoint of step N.
    """

    def __init__(self, run_dir: str | os.PathLike, *, tensorboard: bool = True, resume_step: int | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = metrics_path(run_dir)
        self._file = self._samples = None
        self._tb = None
        self._last_step: int | None = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._last_step = self._prepare_file(resume_step)
        if tensorboard:
            purge = None if resume_step is None else resume_step + 1
            self._tb = _tensorboard_writer(self.path.parent / TENSORBOARD_DIR, purge)
        self._file = open(self.path, "a")
        self.samples_path = self.path.parent / SAMPLES_FILE
        samples_exist = self.samples_path.is_file() and self.samples_path.stat().st_size > 0
        if samples_exist:  # a new run's samples start empty; a resumed run's lose the steps it recomputes
            _truncate_after(self.samples_path, -1 if resume_step is None else resume_step)
        # self._samples is opened by the first log_samples: a run that shows no samples writes no file

    def _prepare_file(self, resume_step: int | None) -> int | None:
        exists = self.path.is_file() and self.path.stat().st_size > 0
        if resume_step is None:
            if exists:
                raise FileExistsError(f"{self.path} already holds metrics; pass resume_step to continue that run "
                                      "or use a new run directory")
            return None
        if resume_step < 0:
            raise ValueError(f"resume_step must be >= 0, got {resume_step}")
        return _truncate_after(self.path, resume_step) if exists else None

    @property
    def last_step(self) -> int | None:
        """The last step in the file (None: none yet)."""
        return self._last_step

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Append `{"step": step, **metrics}` and flush; steps must strictly increase (one line per step)."""
        if not self.enabled:
            return
        if self._file is None:
            raise RuntimeError(f"MetricsLogger for {self.path} is closed")
        if self._last_step is not None and step <= self._last_step:
            raise ValueError(f"step {step} logged after step {self._last_step}: steps must strictly increase "
                             "(merge a step's metrics into one log call)")
        if "step" in metrics:
            raise ValueError("metrics must not contain the key 'step' (it is the log call's first argument)")
        record = {"step": int(step), **{k: _encode_value(k, v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()
        self._last_step = step
        if self._tb is not None:
            for key, value in record.items():
                if key != "step":
                    self._tb.add_scalar(key, _decode_value(value), step)

    def log_samples(self, step: int, samples: list[Mapping[str, Any]]) -> None:
        """Append one line `{"step": step, **sample}` per sample (JSON values) and show them in TensorBoard's
        text tab; flushed at once like the metrics."""
        if not self.enabled or not samples:
            return
        if self._samples is None:
            self._samples = open(self.samples_path, "a")
        for sample in samples:
            self._samples.write(json.dumps({"step": int(step), **sample}, ensure_ascii=False) + "\n")
        self._samples.flush()
        if self._tb is not None:
            self._tb.add_text("samples", "\n\n---\n\n".join(_sample_markdown(s) for s in samples), step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._samples is not None:
            self._samples.close()
            self._samples = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

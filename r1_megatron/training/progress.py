"""A progress display over training steps: step/total, seconds per step, ETA and a few key metrics.

On a terminal it is a tqdm bar on stderr. Where stderr is not a terminal (CI, SLURM log files) a redrawn bar
would fill the log with carriage-return garbage, so it prints plain lines instead, on the first step, every
`ceil(steps to run / 50)` steps and on the last step: at most ~51 lines per run, whatever its length. Without
tqdm installed, the plain lines are used on terminals too.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

DEFAULT_KEYS = ("reward", "acc", "len", "kl")
# Short name shown -> metric name the trainer logs (see r1_megatron.training.metrics_log).
DEFAULT_METRIC_NAMES = {
    "reward": "reward/total_mean",
    "acc": "accuracy",
    "len": "response_length/mean",
    "kl": "loss/kl",
}
MAX_PLAIN_LINES = 50


def _format_number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _make_bar(total: int, initial: int, stream: TextIO, unit: str):
    """A tqdm bar when tqdm is importable and `stream` is a terminal, else None (plain lines)."""
    if not stream.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, file=stream, unit=unit, dynamic_ncols=True)


class Progress:
    """Call `update(step, metrics)` after each finished step (steps counted from 1); `close()` at the end.

    keys: short names shown, in order; metric_names maps each to the logged metric it displays. Keys whose
    metric is absent from an update are left out of that update's display.
    """

    def __init__(self, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 keys: Sequence[str] = DEFAULT_KEYS, metric_names: Mapping[str, str] = DEFAULT_METRIC_NAMES, *,
                 stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic, unit: str = "step"):
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= initial_step <= total_steps:
            raise ValueError(f"initial_step must be in [0, total_steps={total_steps}], got {initial_step}")
        unknown = [k for k in keys if k not in metric_names]
        if unknown:
            raise ValueError(f"progress keys {unknown} have no entry in metric_names {sorted(metric_names)}")
        self.enabled = enabled
        self.total_steps, self.initial_step = total_steps, initial_step
        self.keys, self.metric_names = tuple(keys), dict(metric_names)
        self._clock, self.unit = clock, unit  # unit: what is counted ("step"; evaluation: "question")
        self._start = clock()
        self._stream = stream if stream is not None else sys.stderr
        self._every = max(1, math.ceil((total_steps - initial_step) / MAX_PLAIN_LINES))
        self._next_line_at = initial_step + 1  # the first step always prints
        self._pending: str | None = None  # last plain line not printed yet
        self._bar = _make_bar(total_steps, initial_step, self._stream, unit) if enabled else None

    def summary(self, metrics: Mapping[str, Any]) -> str:
        """`reward=0.25 acc=0.5 ...` for the keys present in `metrics`."""
        return " ".join(f"{k}={_format_number(metrics[self.metric_names[k]])}"
                        for k in self.keys if self.metric_names[k] in metrics)

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self.summary(metrics), refresh=False)
            self._bar.update(step - self._bar.n)
            return
        self._pending = self._plain_line(step, metrics)
        if step >= self._next_line_at or step >= self.total_steps:
            self._print_pending()
            done = step - self.initial_step
            self._next_line_at = self.initial_step + self._every * (done // self._every + 1)

    def _plain_line(self, step: int, metrics: Mapping[str, Any]) -> str:
        done = step - self.initial_step
        sec_per_step = (self._clock() - self._start) / done if done > 0 else math.nan
        eta = sec_per_step * (self.total_steps - step)
        head = (f"{self.unit} {step}/{self.total_steps} ({100 * step / self.total_steps:.0f}%) | "
                f"{sec_per_step:.2f} s/{self.unit} | ETA {_format_duration(eta)}")
        summary = self.summary(metrics)
        return f"{head} | {summary}" if summary else head

    def _print_pending(self) -> None:
        if self._pending is not None:
            print(self._pending, file=self._stream, flush=True)
            self._pending = None

    def close(self) -> None:
        """End the bar; in plain mode print the last update if it fell between lines (e.g. a stop on SIGTERM)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._print_pending()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

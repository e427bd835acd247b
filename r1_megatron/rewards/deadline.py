"""An in-process wall-clock deadline for pure-Python reward code (SIGALRM based).

It is a soft layer: the signal is delivered between bytecodes, so it interrupts sympy's Python loops but not
one long C call, and it only works on the main thread of the process (elsewhere it is a no-op). The hard
guarantee is the reward runner, which kills the worker process from outside.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class RewardTimeout(BaseException):
    """Raised inside the guarded block when the deadline passes (BaseException so bare ``except Exception``
    inside third-party code cannot swallow it)."""


def _raise_timeout(signum, frame):
    raise RewardTimeout()


@contextlib.contextmanager
def wall_deadline(seconds: float | None) -> Iterator[bool]:
    """Raise RewardTimeout in the block after ``seconds``; yields whether the deadline is armed.

    A timer that was already running (an outer deadline) is restored afterwards with its remaining time.
    """
    armed = bool(seconds) and threading.current_thread() is threading.main_thread()
    if not armed:
        yield False
        return
    old_handler = signal.signal(signal.SIGALRM, _raise_timeout)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_handler)
        if old_delay > 0:
            signal.setitimer(signal.ITIMER_REAL, old_delay, old_interval)

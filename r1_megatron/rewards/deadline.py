"""In-process deadlines for pure-Python reward code: by wall time (SIGALRM) or by CPU time (SIGPROF).

A soft layer: the signal is delivered between bytecodes, so it interrupts sympy's Python loops but not one
long C call, and it only works on the main thread of the process (elsewhere it is a no-op). The hard
guarantee is the reward runner, which kills the worker process from outside.

``cpu_deadline`` is the one rewards use: it charges the scoring thread's own CPU time, so a completion gets
the same score on a quiet machine and on one whose other processes take the cores (a wall deadline runs out
while the process waits for a core). ITIMER_PROF counts the CPU of every thread of the process, so it fires no
later than this thread's budget; when other threads used part of it, the handler re-arms for what is left.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from typing import Callable, Iterator

# Shortest re-arm: setitimer rounds to microseconds and a zero value would disarm the timer instead.
_MIN_DELAY_S = 1e-3


class RewardTimeout(BaseException):
    """Raised inside the guarded block when the deadline passes (BaseException so bare ``except Exception``
    inside third-party code cannot swallow it)."""


def wall_deadline(seconds: float | None) -> Iterator[bool]:
    """Raise RewardTimeout in the block after ``seconds`` of wall time; yields whether the deadline is armed."""
    return _deadline(seconds, signal.ITIMER_REAL, signal.SIGALRM, time.monotonic, budget_clock=None)


def cpu_deadline(seconds: float | None) -> Iterator[bool]:
    """Raise RewardTimeout in the block once this thread has used ``seconds`` of CPU time (user + system,
    ``time.thread_time``); yields whether the deadline is armed."""
    return _deadline(seconds, signal.ITIMER_PROF, signal.SIGPROF, time.process_time, budget_clock=time.thread_time)


@contextlib.contextmanager
def _deadline(seconds: float | None, timer: int, signum: int, timer_clock: Callable[[], float],
              budget_clock: Callable[[], float] | None) -> Iterator[bool]:
    """``timer`` (which ``timer_clock`` measures) fires after ``seconds``; the block times out then, or, with a
    ``budget_clock``, once that clock has advanced ``seconds`` (re-armed until it has).

    A timer that was already running (an outer deadline) bounds this one (an inner deadline never outlives it;
    its RewardTimeout reaches the outer block) and is restored afterwards with what it had left, less the time
    this block took on its clock.
    """
    armed = bool(seconds) and threading.current_thread() is threading.main_thread()
    if not armed:
        yield False
        return
    outer_left, outer_interval = signal.getitimer(timer)
    if outer_left > 0:
        seconds = min(seconds, outer_left)
    began, budget_began = timer_clock(), budget_clock() if budget_clock else 0.0

    def on_signal(signum_, frame):
        left = seconds - (budget_clock() - budget_began) if budget_clock else 0.0
        if left > 0:
            signal.setitimer(timer, max(left, _MIN_DELAY_S))
            return
        raise RewardTimeout()

    old_handler = signal.signal(signum, on_signal)
    signal.setitimer(timer, seconds)
    try:
        yield True
    finally:
        signal.setitimer(timer, 0)
        signal.signal(signum, old_handler)
        if outer_left > 0:
            left = outer_left - (timer_clock() - began)
            signal.setitimer(timer, max(left, _MIN_DELAY_S), outer_interval)

"""SIGTERM (what SLURM sends before a time limit, and `kill`) asks the trainer to checkpoint and exit cleanly.

The handler only sets a flag; the trainer checks it between steps, agreed across ranks by one all-reduce, so all
ranks stop after the same step and save one consistent checkpoint.
"""
from __future__ import annotations

import contextlib
import signal

from r1_megatron.runtime import world_max


class StopRequest:
    def __init__(self):
        self.local = False

    def _handle(self, signum, frame) -> None:
        self.local = True

    def agreed(self) -> bool:
        """True on every rank once any rank received SIGTERM (collective: call on all ranks)."""
        return bool(world_max(int(self.local)))


@contextlib.contextmanager
def stop_on_sigterm():
    request = StopRequest()
    previous = signal.signal(signal.SIGTERM, request._handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)

"""Suite-wide test setup.

TRITON_INTERPRET must be set before any module decorates a @triton.jit kernel, so it is set here, first:
on CPU a Triton kernel then runs through Triton's interpreter, which is how CI tests them.
"""
import os
import signal

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The interpreter is ~300x slower than the PyTorch reference kernels: tests/kernels (which check every kernel against
# float64 references) and the one end-to-end trainer test marked `triton` run it; every other test, and the processes
# tests start, compute with the reference kernels (tests/kernels/conftest.py and the marker lift this).
os.environ.setdefault("R1_MEGATRON_KERNELS", "torch")

_PYTEST_PID = os.getpid()


def _interrupt_on_sigterm(signum, frame):
    """A SIGTERM to pytest (a CI job cancelled, `kill`) unwinds like Ctrl-C, so every `with ProcessGroup(...)`
    (tests/parallel/launch.py) kills the torchrun ranks and servers it started; by default the interpreter would
    exit at once and leave them running in their own sessions. A forked child of the suite keeps the default."""
    if os.getpid() != _PYTEST_PID:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    raise KeyboardInterrupt("SIGTERM")


signal.signal(signal.SIGTERM, _interrupt_on_sigterm)


@pytest.fixture(autouse=True)
def _triton_when_marked(request, monkeypatch):
    if request.node.get_closest_marker("triton"):
        monkeypatch.delenv("R1_MEGATRON_KERNELS", raising=False)

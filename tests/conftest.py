"""Suite-wide test setup.

TRITON_INTERPRET must be set before any module decorates a @triton.jit kernel, so it is set here, first:
on CPU a Triton kernel then runs through Triton's interpreter, which is how CI tests them.
"""
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# The interpreter is ~300x slower than the PyTorch reference kernels: tests/kernels (which check every kernel against
# float64 references) and the one end-to-end trainer test marked `triton` run it; every other test, and the processes
# tests start, compute with the reference kernels (tests/kernels/conftest.py and the marker lift this).
os.environ.setdefault("R1_MEGATRON_KERNELS", "torch")


@pytest.fixture(autouse=True)
def _triton_when_marked(request, monkeypatch):
    if request.node.get_closest_marker("triton"):
        monkeypatch.delenv("R1_MEGATRON_KERNELS", raising=False)

"""GPU-only checks (benchmarks/gpu_suite.sh runs them on a GPU machine); each file skips itself without CUDA."""
import os

import pytest


@pytest.fixture(autouse=True)
def _triton_kernels(monkeypatch):
    """On the GPU the compiled Triton kernels are under test (the suite's default is the torch reference, and
    tests/conftest.py turns the interpreter on unless TRITON_INTERPRET is already set)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests run the compiled kernels: TRITON_INTERPRET=0 python -m pytest tests/gpu")
    monkeypatch.delenv("R1_MEGATRON_KERNELS", raising=False)

"""GPU-only checks (benchmarks/gpu_suite.sh runs them on a GPU machine); skipped where there is no CUDA."""
import os

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_suite.sh on a GPU machine)")
    for item in items:
        if "tests/gpu/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _triton_kernels(monkeypatch):
    """On the GPU the compiled Triton kernels are under test (the suite's default is the torch reference, and
    tests/conftest.py turns the interpreter on unless TRITON_INTERPRET is already set)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("GPU tests run the compiled kernels: TRITON_INTERPRET=0 python -m pytest tests/gpu")
    monkeypatch.delenv("R1_MEGATRON_KERNELS", raising=False)

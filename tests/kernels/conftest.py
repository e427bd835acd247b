"""Kernel tests run every Triton kernel through Triton's CPU interpreter; the flag must precede any import
of a @triton.jit module (the suite-wide tests/conftest.py sets it too; this keeps the folder self-sufficient)."""
import os

import pytest

os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _triton_kernels(monkeypatch):
    """Lift the suite's R1_MEGATRON_KERNELS=torch (tests/conftest.py): here the Triton kernels are under test."""
    monkeypatch.delenv("R1_MEGATRON_KERNELS", raising=False)

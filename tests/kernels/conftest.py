"""Kernel tests run every Triton kernel through Triton's CPU interpreter; the flag must precede any import
of a @triton.jit module (the suite-wide tests/conftest.py sets it too; this keeps the folder self-sufficient)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

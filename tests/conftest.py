"""Suite-wide test setup.

TRITON_INTERPRET must be set before any module decorates a @triton.jit kernel, so it is set here, first:
on CPU every Triton kernel then runs through Triton's interpreter, which is how CI tests them.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

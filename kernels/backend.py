"""Which implementation a kernel call runs: the Triton kernel or the pure-PyTorch reference.

Rule: Triton when every tensor is on CUDA, or when TRITON_INTERPRET=1 (Triton's CPU interpreter, used by the
tests); the reference otherwise (CPU without the interpreter, or triton not importable). The environment
variable R1_MEGATRON_KERNELS=triton|torch forces one. The environment is read at call time so that a test can
flip it, but TRITON_INTERPRET itself only takes effect for kernel modules imported after it is set, which is
why the Triton modules are imported lazily (see `triton_module`).
"""
from __future__ import annotations

import enum
import functools
import importlib
import os
from types import ModuleType

import torch

FORCE_ENV = "R1_MEGATRON_KERNELS"
LAUNCH_ENV = "R1_MEGATRON_VOCAB_LAUNCH"  # "BLOCKxWARPS" override of the vocab-streaming kernels' launch


class Backend(str, enum.Enum):
    TRITON = "triton"
    TORCH = "torch"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when `import triton` works; a broken or absent install must not break `import r1_megatron.kernels`."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a triton build that fails at import on this platform
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(*tensors: torch.Tensor | None) -> Backend:
    """Pick the backend for a call on `tensors` (None entries are ignored)."""
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if forced not in ("", Backend.TRITON.value, Backend.TORCH.value):
        raise ValueError(f"{FORCE_ENV}={forced!r}: expected 'triton' or 'torch'")
    if forced == Backend.TORCH.value:
        return Backend.TORCH
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if forced == Backend.TRITON.value:
        if not triton_available():
            raise RuntimeError(f"{FORCE_ENV}=triton but triton is not importable")
        if not (on_cuda or interpreting()):
            raise RuntimeError(f"{FORCE_ENV}=triton needs CUDA tensors or TRITON_INTERPRET=1 for CPU tensors")
        return Backend.TRITON
    if triton_available() and (on_cuda or interpreting()):
        return Backend.TRITON
    return Backend.TORCH


def triton_module(name: str) -> ModuleType:
    """Import `r1_megatron.kernels.<name>` (a module that defines @triton.jit kernels) on first use."""
    return importlib.import_module(f"{__package__}.{name}")

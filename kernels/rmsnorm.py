"""RMSNorm for the model's norm layers; dispatches Triton or reference."""
from __future__ import annotations

import torch

from . import reference
from .backend import Backend, select_backend, triton_module
from .options import check_rms_norm_inputs


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = x / sqrt(mean(x², -1) + eps) · weight: x [..., H] any float dtype, weight [H]; math in fp32, y in x's dtype.

    Differentiable in x and weight (Triton backward kernels on the Triton path).
    """
    check_rms_norm_inputs(x, weight, eps)
    if select_backend(x, weight) is Backend.TORCH:
        return reference.rms_norm(x, weight, eps)
    return triton_module("rmsnorm_triton").rms_norm(x, weight, eps)

"""RMSNorm for Megatron layer specs, backed by r1_megatron.kernels.rms_norm.

Megatron's local WrappedTorchNorm refuses sequence parallelism; this module tags its weight with
`sequence_parallel` so finalize_model_grads all-reduces its gradient across the TP group when SP is on.
"""
from __future__ import annotations

import torch

from r1_megatron.kernels import rms_norm


class RMSNorm(torch.nn.Module):
    """y = x / sqrt(mean(x², -1) + eps) * weight, computed in fp32, returned in x's dtype.

    `eps_override` pins eps where the architecture fixes it independently of config.layernorm_epsilon
    (DeepSeek-V3's MLA latent norms use 1e-6 in HF whatever rms_norm_eps is).
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-6, eps_override: float | None = None):
        super().__init__()
        self.eps = eps if eps_override is None else eps_override
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        setattr(self.weight, "sequence_parallel", config.sequence_parallel)

    def forward(self, x_SBH: torch.Tensor) -> torch.Tensor:
        return rms_norm(x_SBH, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"

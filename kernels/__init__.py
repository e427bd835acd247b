"""Fused kernels of r1_megatron (installed as `r1_megatron.kernels`): Triton on CUDA or under
TRITON_INTERPRET=1, the pure-PyTorch reference elsewhere (see backend.py; R1_MEGATRON_KERNELS=triton|torch
forces one). Importing this package never imports triton; the Triton modules load on first use.
"""
from .backend import Backend, select_backend
from .cross_entropy import cross_entropy
from .decode_attention import decode_attention
from .group_advantage import group_advantages
from .grpo_loss import grpo_loss, token_logprobs
from .options import AdvantageStd, GRPOLossConfig, KLEstimator, LossAgg
from .rmsnorm import rms_norm
from .sampling import combine_sampling_partials, sample_tokens, sampling_partials

__all__ = [
    "AdvantageStd", "Backend", "GRPOLossConfig", "KLEstimator", "LossAgg", "combine_sampling_partials",
    "cross_entropy", "decode_attention", "group_advantages", "grpo_loss", "rms_norm", "sample_tokens",
    "sampling_partials", "select_backend", "token_logprobs",
]

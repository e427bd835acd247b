"""Public per-token cross-entropy from (vocab-parallel) logits; dispatches Triton or reference."""
from __future__ import annotations

import torch

from . import reference
from .backend import Backend, select_backend, triton_module
from .options import check_logprob_inputs


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, tp_group=None,
                  inplace_backward: bool = False) -> torch.Tensor:
    """CE = −log_softmax(logits)[target] over the full vocabulary: [B, T, V_local] → [B, T] fp32.

    logits: bf16/fp16/fp32, this rank's contiguous vocab slice under `tp_group` (Megatron's vocab-parallel
    layout); targets: [B, T] global ids. Differentiable w.r.t. logits. Targets outside [0, V) (e.g. −100) give
    CE 0 and no gradient. The Triton path never makes an fp32 [B, T, V] copy: it streams the logits once in
    forward (one all-gather of 4 fp32 per token under TP) and once in backward (no collective), writing the
    gradient in the logits' dtype; `inplace_backward=True` writes it into the logits buffer (which the caller
    must not read afterwards). The reference computes in fp32 on the gathered logits.
    """
    check_logprob_inputs(logits, targets)
    if select_backend(logits, targets) is Backend.TORCH:
        return reference.cross_entropy(logits, targets, tp_group=tp_group)
    return triton_module("cross_entropy_triton").cross_entropy(logits, targets, tp_group, inplace_backward)

"""Loss functions for train_step: each returns (sum over its units, number of units) for one micro-batch, so that
Megatron divides the summed gradient by the unit count of the whole global batch."""
from __future__ import annotations

import torch

from r1_megatron.training.micro_batch import MicroBatch


def next_token_cross_entropy(logits_BTV: torch.Tensor, mb: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t mask_t · CE(logits_t, labels_t) and Σ_t mask_t over this micro-batch.

    logits_BTV: [B, T, V_local] this rank's vocab slice; mb.labels: [B, T] global vocab ids of the next token;
    mb.loss_mask: [B, T] 1 where it counts (or a per-token weight). The fused kernel (r1_megatron.kernels
    .cross_entropy) reduces over the tensor-parallel vocab shards from 4 fp32 per token, without upcasting the
    logits to an fp32 [B, T, V] copy.
    """
    from megatron.core import parallel_state

    from r1_megatron.kernels import cross_entropy

    tp_group = None
    if parallel_state.model_parallel_is_initialized() and parallel_state.get_tensor_model_parallel_world_size() > 1:
        tp_group = parallel_state.get_tensor_model_parallel_group()
    ce_BT = cross_entropy(logits_BTV, mb.labels, tp_group=tp_group)
    mask_BT = mb.loss_mask.float()
    # where(), not a product alone: a mask-0 position never lets a non-finite CE into the sum
    return torch.where(mask_BT != 0, ce_BT * mask_BT, torch.zeros_like(ce_BT)).sum(), mask_BT.sum()

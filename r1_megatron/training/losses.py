"""Loss functions for train_step: each returns (sum over its units, number of units) for one micro-batch, so that
Megatron divides the summed gradient by the unit count of the whole global batch."""
from __future__ import annotations

import torch

from r1_megatron.training.micro_batch import MicroBatch


def next_token_cross_entropy(logits_BTV: torch.Tensor, batch: MicroBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ_t mask_t · CE(logits_t, labels_t) and Σ_t mask_t over this micro-batch.

    logits_BTV: [B, T, V_local] this rank's vocab slice (vocab-parallel CE reduces over TP ranks);
    batch.labels: [B, T] global vocab ids of the next token; batch.loss_mask: [B, T] 1 where it counts.
    """
    from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

    ce_BT = vocab_parallel_cross_entropy(logits_BTV.float(), batch.labels)
    mask_BT = batch.loss_mask.float()
    return (ce_BT * mask_BT).sum(), mask_BT.sum()

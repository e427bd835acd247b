"""The loss function train_step runs on each GRPO micro-batch: (Σ over units of the GRPO loss, units).

Megatron divides the summed gradient by the global unit count, so every aggregation mode (AlgorithmConfig.loss_agg)
is normalised over the whole mini-batch, across micro-batches and data-parallel ranks:
    token-mean               Σ_tokens ℓ / #tokens
    seq-mean-token-mean      Σ_seqs (Σ_t ℓ / |o_i|) / #sequences with a loss token (R1's 1/G Σ 1/|o_i| Σ_t)
    seq-mean-token-sum       Σ_seqs Σ_t ℓ / #sequences
    seq-mean-token-sum-norm  Σ_seqs Σ_t ℓ / (#sequences · norm_length)   (Dr.GRPO)
Padded rows hold one sequence each, so the kernel's row reductions are the per-sequence ones. Packed rows hold
several: their loss mask carries per-token weights (1/|o_i| for seq-mean-token-mean) and the kernel sums Σ w·ℓ
(token-mean with normaliser 1), and the per-token extra "units" sums to the micro-batch's unit count
(rollout_batch.packed_micro_batches).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from r1_megatron.kernels import GRPOLossConfig, grpo_loss
from r1_megatron.kernels.options import LossAgg
from r1_megatron.training.micro_batch import MicroBatch

from .logprob_pass import tensor_parallel_group

OnBatch = Callable[[MicroBatch, dict], None]  # sees each micro-batch and the kernel's stats (logp, kl, ...)


def policy_loss_fn(loss_cfg: GRPOLossConfig, temperature: float, on_batch: OnBatch | None = None):
    """loss_fn(logits_BTV, batch) -> (Σ over units of the loss, units) for train_step."""
    padded = {f.name: getattr(loss_cfg, f.name) for f in dataclasses.fields(loss_cfg)} | {"temperature": temperature}
    packed = padded | {"loss_agg": LossAgg.TOKEN_MEAN.value, "normalizer": 1.0}

    def loss_fn(logits_BTV, batch: MicroBatch):
        extras = batch.extras
        loss, out = grpo_loss(logits_BTV, batch.labels, extras["old_logprobs"], extras.get("ref_logprobs"),
                              extras["advantages"], batch.loss_mask, tp_group=tensor_parallel_group(),
                              **(packed if batch.packed else padded))
        if on_batch is not None:
            on_batch(batch, out)
        return loss, units(loss_cfg.loss_agg, batch, loss_cfg.norm_length).to(loss.device)

    return loss_fn


def units(agg: LossAgg, batch: MicroBatch, norm_length: int) -> torch.Tensor:
    """The count that the summed loss of a micro-batch is divided by, globally (see the module docstring)."""
    if batch.packed:
        return batch.extras["units"].sum()
    mask_BT = batch.loss_mask
    if agg is LossAgg.TOKEN_MEAN:
        return mask_BT.sum()
    if agg is LossAgg.SEQ_MEAN_TOKEN_MEAN:
        return (mask_BT.sum(dim=1) > 0).sum()
    rows = batch.extras["valid"].sum()
    return rows * norm_length if agg is LossAgg.SEQ_MEAN_TOKEN_SUM_NORM else rows

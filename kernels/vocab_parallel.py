"""Megatron's vocab-parallel layout for the kernels: rank r of the tensor-parallel group owns logits columns
[r·V_local, (r+1)·V_local) of the full vocabulary; the only cross-rank state is a few fp32 numbers per token.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist


@dataclasses.dataclass(frozen=True)
class VocabShard:
    rank: int
    size: int
    v_local: int

    @property
    def vocab_start(self) -> int:
        return self.rank * self.v_local


def vocab_shard(tp_group, v_local: int) -> VocabShard:
    """This rank's slice of the vocabulary (the whole of it without a group)."""
    if tp_group is None:
        return VocabShard(0, 1, v_local)
    return VocabShard(dist.get_rank(tp_group), dist.get_world_size(tp_group), v_local)


def gather_token_state(state_NK: torch.Tensor, tp_group, shard: VocabShard) -> torch.Tensor:
    """All-gather per-token partial state [N, K] fp32 from every rank → [TP, N, K] (one collective)."""
    if shard.size == 1:
        return state_NK.unsqueeze(0)
    out_PN_K = torch.empty((shard.size * state_NK.shape[0], state_NK.shape[1]), dtype=state_NK.dtype,
                           device=state_NK.device)
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    gather(out_PN_K, state_NK.contiguous(), group=tp_group)
    return out_PN_K.view(shard.size, *state_NK.shape)

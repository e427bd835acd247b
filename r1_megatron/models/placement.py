"""Where each of this rank's Megatron tensors sits in the whole model.

A local name (`decoder.layers.0.mlp.experts.local_experts.1.linear_fc1.weight` on pipeline stage 2, expert rank 3)
maps to its global name (layer offset added, expert index made global), and a tensor-parallel parameter to the
slice of the whole tensor it holds (Megatron marks these with `tensor_model_parallel` and `partition_dim`; expert
parameters, marked `allreduce=False`, are split over the expert-tensor-parallel group instead).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from megatron.core import parallel_state
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.local_experts\.(\d+)\.")


@dataclass(frozen=True)
class Shard:
    """This rank holds part `rank` of `world` equal parts of the whole tensor along `dim`."""

    dim: int
    rank: int
    world: int

    def take(self, whole: torch.Tensor) -> torch.Tensor:
        return whole.chunk(self.world, dim=self.dim)[self.rank]


@dataclass(frozen=True)
class Placement:
    layer_offset: int
    expert_offset: int
    tp_rank: int
    tp_world: int
    expert_tp_rank: int
    expert_tp_world: int

    @classmethod
    def of_this_rank(cls, model) -> "Placement":
        num_experts = getattr(model.config, "num_moe_experts", None) or 0
        ep_world = parallel_state.get_expert_model_parallel_world_size()
        return cls(layer_offset=get_transformer_layer_offset(model.config),
                   expert_offset=parallel_state.get_expert_model_parallel_rank() * (num_experts // ep_world),
                   tp_rank=parallel_state.get_tensor_model_parallel_rank(),
                   tp_world=parallel_state.get_tensor_model_parallel_world_size(),
                   expert_tp_rank=parallel_state.get_expert_tensor_parallel_rank(),
                   expert_tp_world=parallel_state.get_expert_tensor_parallel_world_size())

    def global_name(self, local: str) -> str:
        name = _LAYER.sub(lambda m: f"decoder.layers.{int(m.group(1)) + self.layer_offset}.", local)
        return _EXPERT.sub(lambda m: f".local_experts.{int(m.group(1)) + self.expert_offset}.", name)

    def shard(self, param: torch.Tensor) -> Shard | None:
        """The TP slice `param` holds, or None when it is replicated."""
        if not getattr(param, "tensor_model_parallel", False):
            return None
        is_expert = getattr(param, "allreduce", True) is False
        rank, world = (self.expert_tp_rank, self.expert_tp_world) if is_expert else (self.tp_rank, self.tp_world)
        return None if world == 1 else Shard(param.partition_dim, rank, world)

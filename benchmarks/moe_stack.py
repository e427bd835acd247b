"""The layer stack that benchmarks/moe_ep_scaling.py measures: L pre-norm MoE MLPs with residual adds, built from
the project's own ModelConfig -> TransformerConfig mapping and MoE spec (Megatron's MoELayer, router and token
dispatchers). Attention is left out on purpose: the harness measures expert-parallel dispatch, not attention.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from r1_megatron.models import preset
from r1_megatron.models.config import ModelConfig, to_transformer_config
from r1_megatron.runtime import ParallelConfig

# --shape: the preset a shape is taken from and how many of its layers are MoE layers (the rest are dense).
SHAPES = {"dsv3": ("deepseek-v3-671b", 58), "moonlight": ("moonlight-16b-a3b", 26)}
DISPATCHERS = ("alltoall", "allgather", "flex")


@dataclass(frozen=True)
class StackConfig:
    """One MoE stack. `hidden`/`experts`/`moe_ffn` None keep the shape's real sizes; `layers` is the stack depth."""

    shape: str = "dsv3"
    layers: int = 2
    hidden: int | None = None
    experts: int | None = None
    moe_ffn: int | None = None
    dtype: str = "bf16"

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"StackConfig.shape must be one of {sorted(SHAPES)}, got {self.shape!r}")
        for name in ("layers", "hidden", "experts", "moe_ffn"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"StackConfig.{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"StackConfig.dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def model_config(stack: StackConfig, dispatcher: str) -> ModelConfig:
    """The shape's preset with every layer an MoE layer, scaled to the stack's sizes. Expert groups are kept when
    the scaled expert count still forms valid groups (else the JSON's config shows groups None). Aux losses are off: they add collectives that are not
    dispatch (the expert-bias selection that DeepSeek-V3 balances with stays on)."""
    name, _ = SHAPES[stack.shape]
    base = preset(name)
    moe = base.moe
    experts = stack.experts or moe.num_experts
    groups = moe.num_groups
    # DeepSeek's group score sums a group's top-2 experts, and the chosen groups must hold top_k experts
    if groups and (experts % groups or experts // groups < 2 or moe.group_topk * experts // groups < moe.top_k):
        groups = None
    moe = dataclasses.replace(
        moe, num_experts=experts, ffn_hidden_size=stack.moe_ffn or moe.ffn_hidden_size, first_k_dense=0,
        num_groups=groups, group_topk=moe.group_topk if groups else None, top_k=min(moe.top_k, experts),
        aux_loss_coeff=0.0, token_dispatcher="alltoall" if dispatcher == "flex" else dispatcher)
    hidden = stack.hidden or base.hidden_size
    heads = math.gcd(hidden, base.num_attention_heads)  # attention is not built; the config needs a valid count
    return dataclasses.replace(base, hidden_size=hidden, num_layers=stack.layers, num_attention_heads=heads,
                               num_kv_heads=heads, head_dim=None, moe=moe)


def transformer_config(model: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype, dispatcher: str):
    """The project's TransformerConfig; the flex (DeepEP) dispatcher is Megatron's own option on top of it."""
    config = to_transformer_config(model, parallel, dtype)
    if dispatcher == "flex":
        config = dataclasses.replace(config, moe_token_dispatcher_type="flex", moe_enable_deepep=True)
    return config


class MoEStack(torch.nn.Module):
    """x -> x + MoE(RMSNorm(x)), L times; hidden states [S, B, H] as Megatron's layers take them."""

    def __init__(self, model: ModelConfig, config):
        super().__init__()
        from megatron.core.transformer.spec_utils import build_module

        from r1_megatron.models.norm import RMSNorm
        from r1_megatron.models.specs import R1SpecProvider, _mlp_spec

        spec = _mlp_spec(model, R1SpecProvider(), moe=True)
        self.norms = torch.nn.ModuleList(
            RMSNorm(config=config, hidden_size=model.hidden_size, eps=model.rms_norm_eps) for _ in range(model.num_layers))
        self.moes = torch.nn.ModuleList(build_module(spec, config=config, layer_number=i + 1)
                                        for i in range(model.num_layers))

    def forward(self, hidden_SBH: torch.Tensor) -> torch.Tensor:
        for norm, moe in zip(self.norms, self.moes):
            out_SBH, _ = moe(norm(hidden_SBH))
            hidden_SBH = hidden_SBH + out_SBH
        return hidden_SBH


def skew_routers(stack: MoEStack, skew: float) -> list[int]:
    """Add `skew` to the selection bias of the first eighth of the experts (at least one) in every layer, so that
    expert load imbalance shows; returns the favoured experts. The bias enters only expert selection, as
    DeepSeek-V3's aux-loss-free balancing bias does."""
    favoured = []
    for moe in stack.moes:
        bias = moe.router.expert_bias
        if bias is None:
            raise ValueError("--router-skew needs the router's expert bias (MoEConfig.expert_bias)")
        favoured = list(range(max(1, bias.numel() // 8)))
        with torch.no_grad():
            bias[favoured] += skew
    return favoured

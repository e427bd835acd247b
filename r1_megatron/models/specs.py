"""Megatron ModuleSpecs for our models: the only way our modules (norm, core attention, MLA, router) enter Megatron."""
from __future__ import annotations

from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.models.backends import LocalSpecProvider
from megatron.core.models.gpt.gpt_layer_specs import get_mlp_module_spec_for_backend
from megatron.core.models.gpt.moe_module_specs import get_moe_module_spec_for_backend
from megatron.core.post_training.modelopt.layers import Linear as ReplicatedLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.multi_latent_attention import MLASelfAttentionSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)

from r1_megatron.models.attention import core_attention_module
from r1_megatron.models.config import ModelConfig
from r1_megatron.models.mla import LatentCacheMLASelfAttention
from r1_megatron.models.norm import RMSNorm
from r1_megatron.models.router import DeepSeekTopKRouter


class R1SpecProvider(LocalSpecProvider):
    """Megatron's local (non-TE) linear layers with our RMSNorm and the installed core attention."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        return RMSNorm

    def core_attention(self) -> type:
        return core_attention_module()


def _attention_spec(model: ModelConfig, backend: R1SpecProvider) -> ModuleSpec:
    linear_in, linear_out = backend.column_parallel_linear(), backend.row_parallel_linear()
    if model.mla is None:
        submodules = SelfAttentionSubmodules(linear_qkv=linear_in, core_attention=backend.core_attention(),
                                             linear_proj=linear_out)
        return ModuleSpec(module=SelfAttention, params={"attn_mask_type": AttnMaskType.causal}, submodules=submodules)
    latent_norm = ModuleSpec(module=RMSNorm, params={"eps_override": model.mla.latent_norm_eps})
    # The down projections are replicated over TP (as TransformerEngine's "duplicated" linear is), not column-
    # parallel: with a column-parallel kv down projection, megatron-core 0.16.1 leaves the shared rope key
    # k_pos_emb behind gather_from_tensor_model_parallel_region, whose backward drops the other TP ranks' heads'
    # gradient. Replicated, the input stays sequence-parallel and k_pos_emb is gathered from the sequence-parallel
    # region, whose backward reduce-scatters. Found by tests/parallel/test_layouts_training.py.
    submodules = MLASelfAttentionSubmodules(
        linear_q_proj=linear_in, linear_q_down_proj=ReplicatedLinear, linear_q_up_proj=linear_in,
        linear_kv_down_proj=ReplicatedLinear, linear_kv_up_proj=linear_in, core_attention=backend.core_attention(),
        linear_proj=linear_out, q_layernorm=latent_norm, kv_layernorm=latent_norm)
    # MLASelfAttention itself, except in generation forwards with the latent cache (models/mla.py)
    return ModuleSpec(module=LatentCacheMLASelfAttention, params={"attn_mask_type": AttnMaskType.causal},
                      submodules=submodules)


def _mlp_spec(model: ModelConfig, backend: R1SpecProvider, moe: bool) -> ModuleSpec:
    if not moe:
        return get_mlp_module_spec_for_backend(backend=backend, num_experts=None)
    spec = get_moe_module_spec_for_backend(backend=backend, num_experts=model.moe.num_experts, moe_grouped_gemm=False)
    spec.submodules.router = DeepSeekTopKRouter  # group top-k, and routing record/replay (models/routing_replay.py)
    return spec


def layer_spec(model: ModelConfig, moe: bool) -> ModuleSpec:
    """One transformer layer: pre-norm attention and pre-norm MLP (dense or MoE), residual adds."""
    backend = R1SpecProvider()
    return ModuleSpec(module=TransformerLayer, submodules=TransformerLayerSubmodules(
        input_layernorm=RMSNorm, self_attention=_attention_spec(model, backend), self_attn_bda=get_bias_dropout_add,
        pre_mlp_layernorm=RMSNorm, mlp=_mlp_spec(model, backend, moe), mlp_bda=get_bias_dropout_add))


def block_spec(model: ModelConfig, transformer_config) -> TransformerBlockSubmodules:
    """The layers of this pipeline stage (first_k_dense dense layers, then MoE layers) and the final norm."""
    first_dense = model.moe.first_k_dense if model.moe is not None else model.num_layers
    dense, moe = layer_spec(model, moe=False), (layer_spec(model, moe=True) if model.moe is not None else None)
    offset = get_transformer_layer_offset(transformer_config)
    count = get_num_layers_to_build(transformer_config)
    layers = [dense if i < first_dense else moe for i in range(offset, offset + count)]
    return TransformerBlockSubmodules(layer_specs=layers, layer_norm=RMSNorm)

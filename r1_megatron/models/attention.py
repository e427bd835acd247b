"""Core attention (softmax(QKᵀ·scale)V) for Megatron layer specs, chosen by what is installed.

TransformerEngine's fused attention when TE is importable; otherwise `SDPAttention`, a drop-in for Megatron's
DotProductAttention built on torch.nn.functional.scaled_dot_product_attention (which itself dispatches to
FlashAttention-2 / memory-efficient kernels on GPU), with flash-attn's own kernel used for bf16/fp16 causal
attention on CUDA when the flash-attn package is installed and the head dims allow it.

Both attend over the generation KV cache instead when a generation forward is active (models/kv_cache.py).
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule

from r1_megatron.models.kv_cache import active_context


@functools.cache
def installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class SDPAttention(MegatronModule):
    """Megatron core-attention interface on torch SDPA; accepts MLA's k_channels/v_channels (v_dim ≠ qk_dim).

    forward(query [sq, b, np, d], key [sk, b, ng, d], value [sk, b, ng, dv], attention_mask) -> [sq, b, np·dv].
    attention_mask follows Megatron (True = masked out); None means causal, aligned to the last query
    (so a decode step with sq=1 over sk cached keys attends to all of them).
    """

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                 softmax_scale=None, k_channels=None, v_channels=None, cp_comm_type=None, pg_collection=None):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("context parallelism needs TransformerEngine attention (pip install r1_megatron[gpu])")
        self.attn_mask_type = attn_mask_type
        self.layer_number = layer_number
        self.softmax_scale = _softmax_scale(config, softmax_scale, k_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None,
                packed_seq_params=None):
        if packed_seq_params is not None:
            raise ValueError("SDPAttention does not take packed_seq_params (THD packed sequences need "
                             "TransformerEngine); run packed micro-batches through "
                             "r1_megatron.training.model_forward, which gives SDPAttention a block-diagonal "
                             "attention_mask instead")
        if attention_bias is not None:
            raise ValueError("SDPAttention does not support attention_bias; install TransformerEngine for it")
        generation = active_context()
        if generation is not None:
            return generation.attend(self.layer_number, query, key, value, self.softmax_scale)
        sq, b, n_heads, _ = query.shape
        q_BNSD, k_BGSD, v_BGSD = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        dropout_p = self.dropout_p if self.training else 0.0
        mask_type = attn_mask_type or self.attn_mask_type
        if self._can_use_flash_attn(query, key, value, attention_mask, dropout_p):
            from flash_attn import flash_attn_func

            out_BSND = flash_attn_func(query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1),
                                       softmax_scale=self.softmax_scale, causal=True)
            return out_BSND.transpose(0, 1).reshape(sq, b, -1)
        mask = self._sdpa_mask(attention_mask, mask_type, sq, key.shape[0], query.device)
        out_BNSD = F.scaled_dot_product_attention(
            q_BNSD, k_BGSD, v_BGSD, attn_mask=mask, dropout_p=dropout_p, scale=self.softmax_scale,
            enable_gqa=k_BGSD.shape[1] != n_heads)
        return out_BNSD.permute(2, 0, 1, 3).reshape(sq, b, -1)

    @staticmethod
    def _sdpa_mask(attention_mask, mask_type, sq: int, sk: int, device):
        """Boolean SDPA mask (True = attend) from Megatron's (True = masked) or a bottom-right causal one."""
        if attention_mask is not None:
            return ~attention_mask
        if mask_type == AttnMaskType.no_mask:
            return None
        return torch.ones(sq, sk, dtype=torch.bool, device=device).tril(diagonal=sk - sq)

    @staticmethod
    def _can_use_flash_attn(query, key, value, attention_mask, dropout_p) -> bool:
        return (query.is_cuda and attention_mask is None and dropout_p == 0.0 and installed("flash_attn")
                and query.dtype in (torch.float16, torch.bfloat16)
                and query.shape[0] == key.shape[0] and query.shape[-1] == value.shape[-1])


def _softmax_scale(config, softmax_scale, k_channels) -> float:
    """Megatron's default: 1/sqrt(head dim); MLA passes its own (YaRN mscale² / sqrt(qk head dim))."""
    return softmax_scale if softmax_scale is not None else (k_channels or config.kv_channels) ** -0.5


@functools.cache
def _te_attention_with_kv_cache() -> type:
    from megatron.core.extensions.transformer_engine import TEDotProductAttention

    class TEAttentionWithKVCache(TEDotProductAttention):
        """TransformerEngine's attention for training; the generation KV cache inside a generation forward."""

        def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None,
                     softmax_scale=None, k_channels=None, v_channels=None, **kwargs):
            super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout=attention_dropout,
                             softmax_scale=softmax_scale, k_channels=k_channels, v_channels=v_channels, **kwargs)
            self.cache_layer_number = layer_number
            self.cache_softmax_scale = _softmax_scale(config, softmax_scale, k_channels)

        def forward(self, query, key, value, attention_mask, *args, **kwargs):
            generation = active_context()
            if generation is not None:
                return generation.attend(self.cache_layer_number, query, key, value, self.cache_softmax_scale)
            return super().forward(query, key, value, attention_mask, *args, **kwargs)

    return TEAttentionWithKVCache


def takes_packed_seq_params() -> bool:
    """True when core attention is TransformerEngine's, which runs packed rows as THD varlen attention;
    SDPAttention takes them as a block-diagonal attention mask instead (models/packed.py)."""
    return core_attention_module() is not SDPAttention


def core_attention_module() -> type:
    """TransformerEngine's attention where TE is installed (and CUDA present), else SDPAttention; both use the
    generation KV cache inside generation forwards."""
    if torch.cuda.is_available() and installed("transformer_engine"):
        return _te_attention_with_kv_cache()
    return SDPAttention

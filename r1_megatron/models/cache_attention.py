"""Attention of a generation forward over the paged KV cache: decode rows and prefill chunks (varlen).

Decode rows (one query token each) go to `r1_megatron.kernels.decode_attention`, which reads every row's
blocks in place (Triton on GPU, flash-decoding split along the context); its torch reference is the CPU path.
Prefill chunks are attended one sequence at a time, so prompts of different lengths are never padded to the
longest: a chunk of L queries, the last L of its sequence's C positions, attends causally to those C keys
(bottom-right aligned mask; a fresh prompt, C == L, is plain causal attention on its own new keys).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from r1_megatron.kernels import decode_attention

if TYPE_CHECKING:
    from r1_megatron.models.kv_cache import ForwardContext, PrefillChunk


def cached_attention(ctx: ForwardContext, query_NHD: torch.Tensor, keys_PSGD: torch.Tensor,
                     values_PSGE: torch.Tensor, softmax_scale: float) -> torch.Tensor:
    """out_NHE: token i's attention over its sequence's cached keys (written before this call)."""
    if not ctx.prefill:
        return decode_attention(query_NHD, keys_PSGD, values_PSGE, ctx.block_table_DM, ctx.seq_lens_D,
                                softmax_scale)
    parts = []
    if ctx.num_decode:
        parts.append(decode_attention(query_NHD[:ctx.num_decode], keys_PSGD, values_PSGE, ctx.block_table_DM,
                                      ctx.seq_lens_D, softmax_scale))
    parts.extend(chunk_attention(query_NHD[c.start:c.end], keys_PSGD, values_PSGE, c, softmax_scale)
                 for c in ctx.prefill)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def chunk_attention(query_LHD: torch.Tensor, keys_PSGD: torch.Tensor, values_PSGE: torch.Tensor,
                    chunk: PrefillChunk, softmax_scale: float) -> torch.Tensor:
    """softmax(scale · q Kᵀ + causal) V for one prefill chunk: query i (position C - L + i) sees keys 0..C-L+i.
    query [L, H, D]; the sequence's keys/values gathered from its blocks, [C, G, D|E]; -> [L, H, E]."""
    L, H, _ = query_LHD.shape
    C = chunk.context_len
    k_CGD = keys_PSGD[chunk.block_ids_K].flatten(0, 1)[:C]
    v_CGE = values_PSGE[chunk.block_ids_K].flatten(0, 1)[:C]
    q_1HLD, k_1GCD, v_1GCE = (t.transpose(0, 1)[None] for t in (query_LHD, k_CGD, v_CGE))
    mask_LC = None if C == L else torch.ones(L, C, dtype=torch.bool, device=query_LHD.device).tril(C - L)
    out_1HLE = F.scaled_dot_product_attention(q_1HLD, k_1GCD, v_1GCE, attn_mask=mask_LC, is_causal=C == L,
                                              scale=softmax_scale, enable_gqa=k_1GCD.shape[1] != H)
    return out_1HLE[0].transpose(0, 1)

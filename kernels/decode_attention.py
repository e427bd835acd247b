"""Paged decode attention (one query token per row over a block-table KV cache); dispatches Triton or reference."""
from __future__ import annotations

import math

import torch

from . import reference
from .backend import Backend, select_backend, triton_module

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _describe(t: torch.Tensor) -> str:
    return f"{tuple(t.shape)} {t.dtype} on {t.device}"


def check_decode_attention_inputs(q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B, softmax_scale,
                                  num_splits) -> None:
    """Shapes, dtypes and devices of `decode_attention`'s arguments (never their values: that would sync the
    host with the device); raises ValueError naming the bad argument."""
    if q_BND.dim() != 3 or q_BND.dtype not in FLOAT_DTYPES:
        raise ValueError(f"q_BND: expected a float16/bfloat16/float32 tensor [B, N, D], got {_describe(q_BND)}")
    B, N, D = q_BND.shape
    for name, cache in (("k_cache_PSGD", k_cache_PSGD), ("v_cache_PSGE", v_cache_PSGE)):
        if cache.dim() != 4 or cache.dtype != q_BND.dtype or cache.device != q_BND.device:
            raise ValueError(f"{name}: expected a 4-D {q_BND.dtype} tensor on {q_BND.device}, got {_describe(cache)}")
    P, S, G, D_k = k_cache_PSGD.shape
    if D_k != D:
        raise ValueError(f"k_cache_PSGD: head dim {D_k} differs from q_BND's D={D}")
    if tuple(v_cache_PSGE.shape[:3]) != (P, S, G):
        raise ValueError(f"v_cache_PSGE: expected [P, S, G] = {(P, S, G)} like k_cache_PSGD, got "
                         f"{tuple(v_cache_PSGE.shape)}")
    if G == 0 or N % G:
        raise ValueError(f"q_BND: N={N} query heads is not a multiple of the caches' G={G} kv heads")
    for name, t, dims in (("block_table_BM", block_table_BM, 2), ("seq_lens_B", seq_lens_B, 1)):
        if t.dim() != dims or t.dtype != torch.int32 or t.shape[0] != B or t.device != q_BND.device:
            raise ValueError(f"{name}: expected a {dims}-D int32 tensor with {B} rows on {q_BND.device}, "
                             f"got {_describe(t)}")
    if not math.isfinite(softmax_scale):
        raise ValueError(f"softmax_scale={softmax_scale!r}: must be a finite number")
    if num_splits is not None and (isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1):
        raise ValueError(f"num_splits={num_splits!r}: must be None or a positive int")


def decode_attention(q_BND: torch.Tensor, k_cache_PSGD: torch.Tensor, v_cache_PSGE: torch.Tensor,
                     block_table_BM: torch.Tensor, seq_lens_B: torch.Tensor, softmax_scale: float,
                     num_splits: int | None = None) -> torch.Tensor:
    """out[b, n] = softmax(scale · q[b, n] · K_bᵀ) V_b → out_BNE in q's dtype (fp32 accumulation; no autograd).

    q_BND: one query token per row, N heads of dim D (fp16/bf16/fp32). The caches are pools of P blocks of S
    tokens, k [P, S, G, D] and v [P, S, G, E] in q's dtype, any strides (v may be a view of k, e.g. the
    leading E columns of an MLA latent cache); query head n reads kv head n // (N / G). Row b's key t
    (0 <= t < seq_lens_B[b]) sits in block block_table_BM[b, t // S] at offset t % S; table entries past the
    row's length are never read. block_table_BM [B, M] and seq_lens_B [B] are int32; a length beyond M·S is
    clamped to M·S and a row of length 0 gives zeros. The Triton path splits each row's keys into
    `num_splits` chunks (default: chosen from B, G and M·S only, so the call never syncs and is
    CUDA-graph capturable) and allocates nothing but the output and the split partials.
    """
    check_decode_attention_inputs(q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B, softmax_scale,
                                  num_splits)
    if select_backend(q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B) is Backend.TORCH:
        return reference.decode_attention(q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B,
                                          softmax_scale)
    return triton_module("decode_attention_triton").decode_attention(
        q_BND, k_cache_PSGD, v_cache_PSGE, block_table_BM, seq_lens_B, softmax_scale, num_splits)

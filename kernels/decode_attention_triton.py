"""Triton: paged decode attention (flash-decoding) over a block-table KV cache, one query token per row.

Stage 1, grid (B, G · head_tiles, splits): a program takes one row b, one tile of up to BLOCK_H query heads
sharing kv head g (GQA: every K/V tile it loads serves all of them) and one split of the row's keys. The row's
length L is read on the device and cut into `splits` chunks of ceil(L / splits) keys rounded up to BLOCK_T, so
a short row uses the first few splits and leaves the others empty. The program streams its chunk in BLOCK_T
tokens, each token's address coming from block_table[b, t // S] and offset t % S through the caches' own
strides (v may be a strided view of k, as in an MLA latent cache), with an online softmax in fp32:
    m = max s,  l = Σ 2^(s − m),  acc = Σ 2^(s − m) v,   s = log2(e) · scale · q·k
and writes partial_out = acc / l [B, N, splits, E] and partial_lse = m + log2 l [B, N, splits] (base 2; an
empty split writes 0 and −inf). The head dim D is loaded as a power-of-2 part plus a tail (576 = 512 + 64).
Stage 2, grid (B, N): out = Σ_s 2^(lse_s − top) partial_out_s / Σ_s 2^(lse_s − top), top = max_s lse_s; empty
splits weigh 0 and a row of length 0 gives 0. Nothing reads seq_lens on the host, so a call is graph-capturable.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from .backend import interpreting

LOG2_E = 1.4426950408889634
MIN_SPLIT_TOKENS = 256  # heuristic, untuned: shorter splits add partial writes and reduction work for little gain
MAX_SPLITS = 64
_NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)  # finite start of the running max: (m_old − m_new) is never NaN


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    """a @ b accumulated in fp32 (exact fp32 products: "ieee", not tf32). UPCAST multiplies the same values as
    fp32: Triton's interpreter (3.9) matmuls bf16 operands as their uint16 bit patterns."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _scores(q, q_tail, k_row, cols_d, cols_dt, t_ok, stride_kd, D, BLOCK_D: tl.constexpr, HAS_TAIL: tl.constexpr,
            UPCAST: tl.constexpr):
    """q·k of BLOCK_H heads against BLOCK_T keys [BLOCK_H, BLOCK_T]: the power-of-2 part of D, then its tail."""
    k = tl.load(k_row[:, None] + cols_d[None, :] * stride_kd, mask=t_ok[:, None] & (cols_d < D)[None, :], other=0.0)
    s = _dot(q, tl.trans(k), UPCAST)
    if HAS_TAIL:
        cols = BLOCK_D + cols_dt
        k_tail = tl.load(k_row[:, None] + cols[None, :] * stride_kd, mask=t_ok[:, None] & (cols < D)[None, :],
                         other=0.0)
        s += _dot(q_tail, tl.trans(k_tail), UPCAST)
    return s


@triton.jit
def _decode_split_kernel(q_ptr, stride_qb, stride_qn, stride_qd, k_ptr, stride_kp, stride_ks, stride_kg, stride_kd,
                         v_ptr, stride_vp, stride_vs, stride_vg, stride_ve, table_ptr, stride_tb, stride_tm,
                         lens_ptr, stride_lb, part_out_ptr, part_lse_ptr, N, group, head_tiles, D, E, S, M,
                         qk_scale, BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                         BLOCK_DT: tl.constexpr, HAS_TAIL: tl.constexpr, BLOCK_E: tl.constexpr, UPCAST: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1) // head_tiles
    split = tl.program_id(2)
    splits = tl.num_programs(2)
    h_in_group = (tl.program_id(1) % head_tiles) * BLOCK_H + tl.arange(0, BLOCK_H)
    head_ok = h_in_group < group
    heads = (g * group + h_in_group).to(tl.int64)

    # a length past the table's width M·S cannot be addressed: clamp it
    length = tl.minimum(tl.load(lens_ptr + b * stride_lb), M * S)
    chunk = tl.cdiv(tl.cdiv(length, splits), BLOCK_T) * BLOCK_T
    start = split * chunk
    end = tl.minimum(start + chunk, length)

    cols_d = tl.arange(0, BLOCK_D)
    cols_dt = tl.arange(0, BLOCK_DT)
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qn
    q = tl.load(q_rows + cols_d[None, :] * stride_qd, mask=head_ok[:, None] & (cols_d < D)[None, :], other=0.0)
    q_tail = tl.load(q_rows + (BLOCK_D + cols_dt)[None, :] * stride_qd,  # all masked (zeros) without a tail
                     mask=head_ok[:, None] & (BLOCK_D + cols_dt < D)[None, :], other=0.0)
    cols_e = tl.arange(0, BLOCK_E)

    m_i = tl.full([BLOCK_H], _NEG_BIG, tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_E], tl.float32)
    for t0 in tl.range(start, end, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < end
        # entries of the table past the row's length are never read (they may be garbage)
        block = tl.load(table_ptr + b * stride_tb + (t // S) * stride_tm, mask=t_ok, other=0).to(tl.int64)
        offset = t % S
        k_row = k_ptr + block * stride_kp + offset * stride_ks + g * stride_kg
        s = _scores(q, q_tail, k_row, cols_d, cols_dt, t_ok, stride_kd, D, BLOCK_D, HAS_TAIL, UPCAST) * qk_scale
        s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v_row = v_ptr + block * stride_vp + offset * stride_vs + g * stride_vg
        v = tl.load(v_row[:, None] + cols_e[None, :] * stride_ve, mask=t_ok[:, None] & (cols_e < E)[None, :],
                    other=0.0)
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
        m_i = m_new

    filled = l_i > 0
    part = (b * N + heads) * splits + split
    lse = tl.where(filled, m_i + tl.math.log2(tl.where(filled, l_i, 1.0)), float("-inf"))
    tl.store(part_lse_ptr + part, lse, mask=head_ok)
    out = acc / tl.where(filled, l_i, 1.0)[:, None]
    tl.store(part_out_ptr + part[:, None] * E + cols_e[None, :], out, mask=head_ok[:, None] & (cols_e < E)[None, :])


@triton.jit
def _decode_reduce_kernel(part_out_ptr, part_lse_ptr, out_ptr, stride_ob, stride_on, splits, E,
                          BLOCK_SPLITS: tl.constexpr, BLOCK_E: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    part0 = (b * tl.num_programs(1) + n) * splits
    idx = tl.arange(0, BLOCK_SPLITS)
    lse = tl.load(part_lse_ptr + part0 + idx, mask=idx < splits, other=float("-inf"))
    top = tl.maximum(tl.max(lse, axis=0), _NEG_BIG)  # every split empty (length 0): keep top finite
    total = tl.sum(tl.math.exp2(lse - top), axis=0)
    cols = tl.arange(0, BLOCK_E)
    acc = tl.zeros([BLOCK_E], tl.float32)
    for s in tl.range(0, splits):
        weight = tl.math.exp2(tl.load(part_lse_ptr + part0 + s) - top)  # 0 for an empty split (its out is 0)
        acc += weight * tl.load(part_out_ptr + (part0 + s) * E + cols, mask=cols < E, other=0.0)
    out = acc / tl.where(total > 0, total, 1.0)
    tl.store(out_ptr + b * stride_ob + n * stride_on + cols, out.to(out_ptr.dtype.element_ty), mask=cols < E)


@dataclasses.dataclass(frozen=True)
class DecodeLaunch:
    """Tile sizes of the split kernel for head dims D (keys) and E (values) and GQA group size."""

    block_h: int
    block_t: int
    block_d: int
    block_dt: int
    has_tail: bool  # D > block_d: columns block_d.. are a second, masked tile of width block_dt
    block_e: int
    num_warps: int

    @staticmethod
    def for_dims(D: int, E: int, group: int) -> "DecodeLaunch":
        # dot operands need ≥ 16 along the reduced dim; D beyond its largest power of 2 goes to a masked tail
        block_d = max(16, 1 << (D.bit_length() - 1))
        has_tail = D > block_d
        block_dt = max(16, triton.next_power_of_2(D - block_d)) if has_tail else 16
        # MLA's 576-wide keys: 16 tokens a tile compile to 166 registers at 4 warps on sm_90, 32 tokens to the
        # 255 limit (64 spill); D = 128 at 32 tokens takes 72. Not yet tuned on a GPU.
        block_t = 16 if D > 256 else 32
        # up to 16 query heads share each K/V tile; larger groups take several head tiles (K/V re-read from L2)
        return DecodeLaunch(min(triton.next_power_of_2(group), 16), block_t, block_d, block_dt, has_tail,
                            max(16, triton.next_power_of_2(E)), 4)


def multiprocessors(device: torch.device) -> int:
    """SMs of a CUDA device (a cached host query, no sync); under the interpreter a small stand-in."""
    if device.type == "cuda" and not interpreting():
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4


def choose_num_splits(batch: int, programs_per_row: int, max_kv_len: int, sms: int) -> int:
    """Splits so that batch · programs_per_row · splits fills about two waves of `sms` SMs, but no split is
    shorter than MIN_SPLIT_TOKENS of the longest row the table can hold (max_kv_len = M·S), and at most
    MAX_SPLITS. Static quantities only: the choice never depends on seq_lens' values."""
    wanted = triton.cdiv(2 * sms, max(batch * programs_per_row, 1))
    return max(1, min(wanted, triton.cdiv(max_kv_len, MIN_SPLIT_TOKENS), MAX_SPLITS))


def decode_attention(q_BND: torch.Tensor, k_cache_PSGD: torch.Tensor, v_cache_PSGE: torch.Tensor,
                     block_table_BM: torch.Tensor, seq_lens_B: torch.Tensor, softmax_scale: float,
                     num_splits: int | None) -> torch.Tensor:
    """Launch both stages (inputs validated by the caller) → out [B, N, E] in q's dtype."""
    B, N, D = q_BND.shape
    _, S, G, _ = k_cache_PSGD.shape
    E, M, group = v_cache_PSGE.shape[-1], block_table_BM.shape[1], N // G
    launch = DecodeLaunch.for_dims(D, E, group)
    head_tiles = triton.cdiv(group, launch.block_h)
    splits = num_splits or choose_num_splits(B, G * head_tiles, M * S, multiprocessors(q_BND.device))
    out_BNE = torch.empty((B, N, E), dtype=q_BND.dtype, device=q_BND.device)
    part_out_BNXE = torch.empty((B, N, splits, E), dtype=torch.float32, device=q_BND.device)
    part_lse_BNX = torch.empty((B, N, splits), dtype=torch.float32, device=q_BND.device)
    if B == 0:
        return out_BNE
    _decode_split_kernel[(B, G * head_tiles, splits)](
        q_BND, *q_BND.stride(), k_cache_PSGD, *k_cache_PSGD.stride(), v_cache_PSGE, *v_cache_PSGE.stride(),
        block_table_BM, *block_table_BM.stride(), seq_lens_B, seq_lens_B.stride(0), part_out_BNXE, part_lse_BNX, N,
        group, head_tiles, D, E, S, M, softmax_scale * LOG2_E, BLOCK_H=launch.block_h, BLOCK_T=launch.block_t,
        BLOCK_D=launch.block_d, BLOCK_DT=launch.block_dt, HAS_TAIL=launch.has_tail, BLOCK_E=launch.block_e,
        UPCAST=interpreting() and q_BND.dtype == torch.bfloat16,
        num_warps=launch.num_warps, num_stages=2)
    _decode_reduce_kernel[(B, N)](part_out_BNXE, part_lse_BNX, out_BNE, out_BNE.stride(0), out_BNE.stride(1), splits,
                                  E, BLOCK_SPLITS=triton.next_power_of_2(splits), BLOCK_E=launch.block_e,
                                  num_warps=4)
    return out_BNE

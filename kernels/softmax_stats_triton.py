"""Triton: per-token online-softmax state over a (vocab-parallel) logits shard, and its cross-rank combination.

One program streams one token's row of V_local logits in BLOCK_V chunks and keeps four fp32 numbers
(the "partials"): running max m, Σ exp(x − m), Σ exp(x − m)(x − m) (for the entropy) and the target logit
(0 on ranks that do not own the target). x are logits / temperature. Ranks exchange only these 4 numbers per
token; `_combine_partials` folds the TP copies into log Z, log p(target) and the entropy H = log Z − E_p[x].
"""
from __future__ import annotations

import dataclasses
import os

import torch
import triton
import triton.language as tl

from .backend import LAUNCH_ENV, interpreting

N_PARTIALS = 4  # m, sum-exp, sum-exp-weighted-deviation, target logit
_NEG_BIG: tl.constexpr = tl.constexpr(-1.0e30)  # finite "-inf" start for the running max: keeps (m_old - m_new) * 0 from producing NaN


@triton.jit
def _write_logp_grad_row(x_row, g_row, V_local, local_target, log_z, coef, inv_temp, BLOCK_V: tl.constexpr):
    """g_row[v] = coef · (onehot_v(target) − softmax_v(x · inv_temp)): the gradient of coef · log p(target) for
    one token's logits shard (softmax from the token's full-vocabulary log Z), written in g_row's dtype. A zero
    coef (masked or ignored token) writes a zero row without reading the logits."""
    if coef == 0.0:
        for start in tl.range(0, V_local, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            tl.store(g_row + cols, tl.zeros([BLOCK_V], tl.float32).to(g_row.dtype.element_ty), mask=cols < V_local)
    else:
        for start in tl.range(0, V_local, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V_local
            x = tl.load(x_row + cols, mask=valid, other=0.0).to(tl.float32) * inv_temp
            g = coef * (tl.where(cols == local_target, 1.0, 0.0) - tl.exp(x - log_z))
            tl.store(g_row + cols, g.to(g_row.dtype.element_ty), mask=valid)


@dataclasses.dataclass(frozen=True)
class VocabLaunch:
    """Chunk width over the vocabulary and warps per program for the row-streaming kernels."""

    block_v: int
    num_warps: int

    @staticmethod
    def for_vocab(v_local: int) -> "VocabLaunch":
        override = os.environ.get(LAUNCH_ENV)
        if override:  # e.g. "8192x16": lets benchmarks sweep configurations on a new GPU without code changes
            return VocabLaunch.parse(override)
        if interpreting():
            # numpy runs a whole chunk at once; quarter-width chunks still exercise the multi-chunk path in tests
            return VocabLaunch(min(max(triton.next_power_of_2(v_local) // 4, 16), 32768), 1)
        # 4096-wide chunks keep 16 bf16/fp32 elements per thread at 8 warps: enough loads in flight to stream
        # at HBM speed without register spills; small vocabularies shrink the chunk instead of masking it.
        block = min(triton.next_power_of_2(v_local), 4096)
        return VocabLaunch(block, 8 if block >= 2048 else 4)

    @staticmethod
    def parse(text: str) -> "VocabLaunch":
        try:
            block, warps = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise ValueError(f"{LAUNCH_ENV}={text!r}: expected BLOCKxWARPS, e.g. 8192x16") from None
        if block & (block - 1) or warps & (warps - 1) or not (16 <= block <= 65536 and 1 <= warps <= 32):
            raise ValueError(f"{LAUNCH_ENV}={text!r}: BLOCK a power of 2 in [16, 65536], WARPS in 1..32")
        return VocabLaunch(block, warps)


@triton.jit
def _vocab_partials_kernel(logits_ptr, stride_b, stride_t, T, targets_ptr, partials_ptr, V_local, vocab_start,
                           inv_temp, BLOCK_V: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + (n // T) * stride_b + (n % T) * stride_t
    m = _NEG_BIG
    s = 0.0
    e = 0.0
    for start in tl.range(0, V_local, BLOCK_V):
        cols = start + tl.arange(0, BLOCK_V)
        x = tl.load(row_ptr + cols, mask=cols < V_local, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(x, axis=0))
        scale = tl.exp(m - m_new)
        p = tl.exp(x - m_new)
        # re-centre Σ p(x − m) on the new max: Σ e^{x−m'}(x−m') = scale·(Σ e^{x−m}(x−m) + (m−m')·Σ e^{x−m})
        dev = tl.where(p > 0, x - m_new, 0.0)  # -inf logits (and padding lanes) have p = 0: keep 0·(-inf) out
        e = scale * (e + (m - m_new) * s) + tl.sum(p * dev, axis=0)
        s = scale * s + tl.sum(p, axis=0)
        m = m_new
    target = tl.load(targets_ptr + n).to(tl.int64) - vocab_start
    owned = (target >= 0) & (target < V_local)
    t_logit = tl.load(row_ptr + tl.where(owned, target, 0), mask=owned, other=0.0).to(tl.float32) * inv_temp
    out = partials_ptr + n * 4
    tl.store(out, m)
    tl.store(out + 1, s)
    tl.store(out + 2, e)
    tl.store(out + 3, t_logit)


@triton.jit
def _combine_partials(partials_ptr, n, valid, N, TP):
    """(log Z, log p(target), entropy) for token indices `n` from the [TP, N, 4] partials of every rank."""
    m_max = tl.full(n.shape, _NEG_BIG, tl.float32)
    for r in range(TP):
        m_max = tl.maximum(m_max, tl.load(partials_ptr + (r * N + n) * 4, mask=valid, other=0.0))
    s_tot = tl.zeros(n.shape, tl.float32)
    e_tot = tl.zeros(n.shape, tl.float32)
    t_logit = tl.zeros(n.shape, tl.float32)
    for r in range(TP):
        base = partials_ptr + (r * N + n) * 4
        m_r = tl.load(base, mask=valid, other=0.0)
        s_r = tl.load(base + 1, mask=valid, other=1.0)
        w = tl.exp(m_r - m_max)
        s_tot += w * s_r
        e_tot += w * ((m_r - m_max) * s_r + tl.load(base + 2, mask=valid, other=0.0))
        t_logit += tl.load(base + 3, mask=valid, other=0.0)
    log_s = tl.log(s_tot)
    log_z = m_max + log_s
    return log_z, t_logit - log_z, log_s - e_tot / s_tot


@triton.jit
def _logprob_kernel(partials_ptr, logp_ptr, N, TP, BLOCK_N: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = n < N
    _, logp, _ = _combine_partials(partials_ptr, n, valid, N, TP)
    tl.store(logp_ptr + n, logp, mask=valid)


def vocab_partials(logits_BTV: torch.Tensor, targets_BT: torch.Tensor, vocab_start: int,
                   temperature: float) -> torch.Tensor:
    """Launch the streaming pass: [B, T, V_local] logits (any row strides) → partials [N, 4] fp32."""
    B, T, V = logits_BTV.shape
    partials_N4 = torch.empty((B * T, N_PARTIALS), dtype=torch.float32, device=logits_BTV.device)
    launch = VocabLaunch.for_vocab(V)
    _vocab_partials_kernel[(B * T,)](
        logits_BTV, logits_BTV.stride(0), logits_BTV.stride(1), T, targets_BT.reshape(-1), partials_N4, V,
        vocab_start, 1.0 / temperature, BLOCK_V=launch.block_v, num_warps=launch.num_warps)
    return partials_N4


def logprobs_from_partials(partials_PN4: torch.Tensor) -> torch.Tensor:
    """log p(target) [N] fp32 from the gathered partials [TP, N, 4]."""
    tp, n_tok = partials_PN4.shape[:2]
    logp_N = torch.empty(n_tok, dtype=torch.float32, device=partials_PN4.device)
    block = min(triton.next_power_of_2(n_tok), 1024)
    _logprob_kernel[(triton.cdiv(n_tok, block),)](partials_PN4, logp_N, n_tok, tp, BLOCK_N=block)
    return logp_N

"""Triton cross-entropy from vocab-parallel logits: CE = log Z − x_target per token, no fp32 [N, V] copy.

Forward: stream the logits once (softmax_stats_triton) → 4 fp32 partials per token; under TP one all-gather of
those partials; `_ce_kernel` folds them into CE and log Z. Backward: d CE/d x_v = g_n·(softmax_v − onehot_v(y))
with the incoming per-token gradient g_n, one read of the logits and one write of the gradient (in the logits'
dtype, into a fresh buffer or, with inplace_backward, into the logits themselves), no collective. Tokens whose
target is outside the full vocabulary [0, V) (e.g. −100) are ignored: CE 0, gradient 0.
Saved state: log Z [N] fp32 (besides the logits and targets the caller already holds).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .softmax_stats_triton import VocabLaunch, _combine_partials, _write_logp_grad_row, vocab_partials
from .vocab_parallel import gather_token_state, vocab_shard


@triton.jit
def _ce_kernel(partials_ptr, targets_ptr, ce_ptr, logz_ptr, N, TP, V_total, BLOCK_N: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    valid = n < N
    log_z, logp, _ = _combine_partials(partials_ptr, n, valid, N, TP)
    target = tl.load(targets_ptr + n, mask=valid, other=-1).to(tl.int64)
    counted = (target >= 0) & (target < V_total)
    tl.store(ce_ptr + n, tl.where(counted, -logp, 0.0), mask=valid)
    tl.store(logz_ptr + n, log_z, mask=valid)


@triton.jit
def _ce_grad_kernel(logits_ptr, stride_b, stride_t, grad_ptr, gstride_b, gstride_t, T, targets_ptr, logz_ptr,
                    dce_ptr, V_local, vocab_start, V_total, BLOCK_V: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = n // T
    t = n % T
    target = tl.load(targets_ptr + n).to(tl.int64)
    coef = tl.where((target >= 0) & (target < V_total), tl.load(dce_ptr + n), 0.0)
    # d CE/d x = g·(softmax − onehot) = −g·(onehot − softmax); ignored or zero-weight tokens get a zero row
    _write_logp_grad_row(logits_ptr + b * stride_b + t * stride_t, grad_ptr + b * gstride_b + t * gstride_t,
                         V_local, target - vocab_start, tl.load(logz_ptr + n), -coef, 1.0, BLOCK_V)


def ce_from_partials(partials_PN4: torch.Tensor, targets_BT: torch.Tensor, v_total: int):
    """(CE [N], log Z [N]) fp32 from the gathered partials [TP, N, 4]."""
    tp, n_tok = partials_PN4.shape[:2]
    ce_N, logz_N = (torch.empty(n_tok, dtype=torch.float32, device=partials_PN4.device) for _ in range(2))
    block = min(triton.next_power_of_2(n_tok), 1024)
    _ce_kernel[(triton.cdiv(n_tok, block),)](partials_PN4, targets_BT.reshape(-1), ce_N, logz_N, n_tok, tp, v_total,
                                            BLOCK_N=block)
    return ce_N, logz_N


def ce_logits_grad(logits_BTV, targets_BT, logz_N, grad_ce_BT, vocab_start: int, v_total: int, inplace: bool):
    """Write d(Σ grad_ce·CE)/d logits (into `logits_BTV` itself when `inplace`) and return it."""
    B, T, V = logits_BTV.shape
    grad_BTV = logits_BTV if inplace else torch.empty_like(logits_BTV)
    dce_N = grad_ce_BT.to(torch.float32).contiguous().reshape(-1)  # may arrive expanded (stride 0)
    launch = VocabLaunch.for_vocab(V)
    _ce_grad_kernel[(B * T,)](
        logits_BTV, logits_BTV.stride(0), logits_BTV.stride(1), grad_BTV, grad_BTV.stride(0), grad_BTV.stride(1),
        T, targets_BT.reshape(-1), logz_N, dce_N, V, vocab_start, v_total, BLOCK_V=launch.block_v,
        num_warps=launch.num_warps)
    return grad_BTV


class CrossEntropyFunction(torch.autograd.Function):
    """autograd wrapper: (logits [B, T, V_local], targets [B, T]) → CE [B, T] fp32, differentiable w.r.t. logits."""

    @staticmethod
    def forward(ctx, logits_BTV, targets_BT, tp_group, inplace):
        B, T, V = logits_BTV.shape
        shard = vocab_shard(tp_group, V)
        partials_N4 = vocab_partials(logits_BTV, targets_BT, shard.vocab_start, 1.0)
        partials_PN4 = gather_token_state(partials_N4, tp_group, shard)
        ce_N, logz_N = ce_from_partials(partials_PN4, targets_BT, V * shard.size)
        ctx.save_for_backward(logits_BTV, targets_BT, logz_N)
        ctx.vocab_start, ctx.v_total, ctx.inplace = shard.vocab_start, V * shard.size, inplace
        return ce_N.view(B, T)

    @staticmethod
    def backward(ctx, grad_ce_BT):
        logits_BTV, targets_BT, logz_N = ctx.saved_tensors
        grad_BTV = ce_logits_grad(logits_BTV, targets_BT, logz_N, grad_ce_BT, ctx.vocab_start, ctx.v_total,
                                  ctx.inplace)
        return grad_BTV, None, None, None


def cross_entropy(logits_BTV, targets_BT, tp_group, inplace_backward: bool):
    """Triton path of `r1_megatron.kernels.cross_entropy` (arguments already validated)."""
    return CrossEntropyFunction.apply(logits_BTV, targets_BT, tp_group, inplace_backward)

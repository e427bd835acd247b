"""Triton GRPO loss: forward from vocab-parallel logits, backward writing d loss / d logits once.

Forward: (1) stream the logits once (softmax_stats_triton) → 4 fp32 partials per token; under TP one
all-gather of those partials; (2) `_token_loss_kernel`, one program per sequence, folds them into log p,
applies the clamped ratio / clip / dual clip / clamped KL per token and writes the per-sequence sums the
aggregation needs.
Backward: d loss/d x_v = g_t·(onehot_v(y) − softmax_v(x/τ))/τ with the per-token scalar
g_t = grad_out·w_b·dℓ/dlogp (w_b from loss_aggregation), one read of the logits and one write of the
gradient, no collective. Saved state: log Z [N], dℓ/dlogp [N] and w [B], all fp32.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .loss_aggregation import masked_means, sequence_weights
from .options import GRPOLossConfig, KLEstimator
from .softmax_stats_triton import VocabLaunch, _combine_partials, _write_logp_grad_row, vocab_partials
from .vocab_parallel import gather_token_state, vocab_shard

_KL_CODE = {KLEstimator.K1: 1, KLEstimator.K2: 2, KLEstimator.K3: 3}
_ROW_SUMS = 6  # Σmask, Σmask·ℓ, Σmask·KL, Σmask·clipped, Σmask·ρ, Σmask·H
_STAT_NAMES = ("kl", "clip_frac", "ratio", "entropy")


@triton.jit
def _clamp(x, bound):
    """(clamp(x, −bound, bound), whether it bound) as torch.clamp: NaN stays NaN; bound = inf turns it off."""
    binds = (x > bound) | (x < -bound)
    return tl.where(x > bound, bound, tl.where(x < -bound, -bound, x)), binds


@triton.jit
def _kl_and_grad(logp, ref, kl_log_ratio_clamp, kl_value_clamp, KL_KIND: tl.constexpr):
    """(KL, dKL/dlogp) for estimator k1 | k2 | k3 with d = ref − logp; k3 clamps d and caps its value, with zero
    gradient where either binds."""
    d = ref - logp
    if KL_KIND == 1:
        kl = -d
        dkl = tl.full(d.shape, 1.0, tl.float32)
    elif KL_KIND == 2:
        kl = 0.5 * d * d
        dkl = -d
    else:
        d_c, d_binds = _clamp(d, kl_log_ratio_clamp)
        exp_d = tl.exp(d_c)
        kl = exp_d - d_c - 1.0
        capped = kl > kl_value_clamp
        dkl = tl.where(d_binds | capped, 0.0, 1.0 - exp_d)
        kl = tl.where(capped, kl_value_clamp, kl)
    return kl, dkl


@triton.jit
def _surrogate_and_grad(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL: tl.constexpr):
    """(surrogate, d surrogate/d logp, clipped) for min(ρA, clip(ρ)A) and, with dual clip c, max(·, cA) at A < 0."""
    unclipped = ratio * adv
    clipped_obj = tl.minimum(tl.maximum(ratio, clip_low), clip_high) * adv
    surr = tl.minimum(unclipped, clipped_obj)
    dsurr = tl.where(unclipped <= clipped_obj, unclipped, 0.0)  # dρ/dlogp = ρ; the clipped branch is constant
    clipped = clipped_obj < unclipped
    if HAS_DUAL:
        floor = dual_clip * adv
        dual = (adv < 0) & (floor > surr)
        surr = tl.where(dual, floor, surr)
        dsurr = tl.where(dual, 0.0, dsurr)
        clipped = clipped | dual
    return surr, dsurr, clipped


@triton.jit
def _token_loss_kernel(partials_ptr, N, TP, T, old_ptr, ref_ptr, adv_ptr, adv_stride_b, adv_stride_t, mask_ptr,
                       logp_ptr, logz_ptr, dloss_ptr, row_sums_ptr, clip_low, clip_high, dual_clip, kl_coef,
                       log_ratio_clamp, kl_log_ratio_clamp, kl_value_clamp, HAS_REF: tl.constexpr,
                       ADD_KL: tl.constexpr, KL_KIND: tl.constexpr, HAS_DUAL: tl.constexpr, BLOCK_T: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    acc_mask = tl.zeros([BLOCK_T], tl.float32)
    acc_loss = tl.zeros([BLOCK_T], tl.float32)
    acc_kl = tl.zeros([BLOCK_T], tl.float32)
    acc_clip = tl.zeros([BLOCK_T], tl.float32)
    acc_ratio = tl.zeros([BLOCK_T], tl.float32)
    acc_ent = tl.zeros([BLOCK_T], tl.float32)
    for t0 in tl.range(0, T, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        valid = t < T
        n = b * T + t
        log_z, logp, entropy = _combine_partials(partials_ptr, n, valid, N, TP)
        old = tl.load(old_ptr + n, mask=valid, other=0.0).to(tl.float32)
        adv = tl.load(adv_ptr + b * adv_stride_b + t * adv_stride_t, mask=valid, other=0.0).to(tl.float32)
        w = tl.where(valid, tl.load(mask_ptr + n, mask=valid, other=0).to(tl.float32), 0.0)
        on = w != 0
        log_ratio, ratio_binds = _clamp(logp - old, log_ratio_clamp)
        ratio = tl.exp(log_ratio)
        surr, dsurr, clipped = _surrogate_and_grad(ratio, adv, clip_low, clip_high, dual_clip, HAS_DUAL)
        loss = -surr
        dloss = tl.where(ratio_binds, 0.0, -dsurr)
        clipped = clipped | ratio_binds
        kl = tl.zeros([BLOCK_T], tl.float32)
        if HAS_REF:
            ref = tl.load(ref_ptr + n, mask=valid, other=0.0).to(tl.float32)
            kl, dkl = _kl_and_grad(logp, ref, kl_log_ratio_clamp, kl_value_clamp, KL_KIND)
            if ADD_KL:
                loss += kl_coef * kl
                dloss += kl_coef * dkl
        tl.store(logp_ptr + n, logp, mask=valid)
        tl.store(logz_ptr + n, log_z, mask=valid)
        tl.store(dloss_ptr + n, tl.where(on, w * dloss, 0.0), mask=valid)
        # where(), not a product, so garbage (inf/NaN inputs) at mask-0 positions never reaches a sum
        acc_mask += w
        acc_loss += tl.where(on, w * loss, 0.0)
        acc_kl += tl.where(on, w * kl, 0.0)
        acc_clip += tl.where(on & clipped, w, 0.0)
        acc_ratio += tl.where(on, w * ratio, 0.0)
        acc_ent += tl.where(on, w * entropy, 0.0)
    out = row_sums_ptr + b * 6
    tl.store(out, tl.sum(acc_mask, axis=0))
    tl.store(out + 1, tl.sum(acc_loss, axis=0))
    tl.store(out + 2, tl.sum(acc_kl, axis=0))
    tl.store(out + 3, tl.sum(acc_clip, axis=0))
    tl.store(out + 4, tl.sum(acc_ratio, axis=0))
    tl.store(out + 5, tl.sum(acc_ent, axis=0))


@triton.jit
def _logits_grad_kernel(logits_ptr, stride_b, stride_t, grad_ptr, gstride_b, gstride_t, T, targets_ptr, logz_ptr,
                        dloss_ptr, weight_ptr, grad_out_ptr, V_local, vocab_start, inv_temp,
                        BLOCK_V: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    b = n // T
    t = n % T
    coef = tl.load(grad_out_ptr).to(tl.float32) * tl.load(weight_ptr + b) * tl.load(dloss_ptr + n) * inv_temp
    # masked tokens (zero coef: prompt, padding) get a zero row without their logits being read
    _write_logp_grad_row(logits_ptr + b * stride_b + t * stride_t, grad_ptr + b * gstride_b + t * gstride_t,
                         V_local, tl.load(targets_ptr + n).to(tl.int64) - vocab_start, tl.load(logz_ptr + n),
                         coef, inv_temp, BLOCK_V)


def _bound(clamp: float | None) -> float:
    """A clamp's bound for the kernel: inf (a clamp that never binds) when the guard is off."""
    return math.inf if clamp is None else clamp


def _token_loss(partials_PN4, old_BT, ref_BT, adv, mask_BT, cfg: GRPOLossConfig):
    """Launch the per-sequence epilogue → (logp [N], logZ [N], dℓ/dlogp [N], row sums [B, 6]), all fp32."""
    B, T = old_BT.shape
    n_tok = B * T
    f32 = dict(dtype=torch.float32, device=old_BT.device)
    logp_N, logz_N, dloss_N = (torch.empty(n_tok, **f32) for _ in range(3))
    row_sums_B6 = torch.empty((B, _ROW_SUMS), **f32)
    adv_strides = (adv.stride(0), 0) if adv.dim() == 1 else adv.stride()
    has_ref = ref_BT is not None
    old_BT, mask_BT = old_BT.contiguous(), mask_BT.contiguous()
    ref_BT = ref_BT.contiguous() if has_ref else old_BT  # a placeholder pointer, never read without HAS_REF
    _token_loss_kernel[(B,)](
        partials_PN4, n_tok, partials_PN4.shape[0], T, old_BT, ref_BT, adv, adv_strides[0], adv_strides[1],
        mask_BT, logp_N, logz_N, dloss_N, row_sums_B6, cfg.clip_low, cfg.clip_high, cfg.dual_clip or 0.0,
        cfg.kl_coef, _bound(cfg.log_ratio_clamp), _bound(cfg.kl_log_ratio_clamp), _bound(cfg.kl_value_clamp),
        HAS_REF=has_ref, ADD_KL=cfg.kl_coef != 0, KL_KIND=_KL_CODE[cfg.kl_estimator],
        HAS_DUAL=cfg.dual_clip is not None, BLOCK_T=min(triton.next_power_of_2(T), 1024))
    return logp_N, logz_N, dloss_N, row_sums_B6


def logits_grad(logits_BTV, targets_BT, logz_N, dloss_N, weight_B, grad_out, vocab_start, temperature, inplace):
    """Write d loss / d logits (into `logits_BTV` itself when `inplace`) and return it."""
    B, T, V = logits_BTV.shape
    grad_BTV = logits_BTV if inplace else torch.empty_like(logits_BTV)
    launch = VocabLaunch.for_vocab(V)
    _logits_grad_kernel[(B * T,)](
        logits_BTV, logits_BTV.stride(0), logits_BTV.stride(1), grad_BTV, grad_BTV.stride(0), grad_BTV.stride(1),
        T, targets_BT.reshape(-1), logz_N, dloss_N, weight_B, grad_out.reshape(1).to(torch.float32), V,
        vocab_start, 1.0 / temperature, BLOCK_V=launch.block_v, num_warps=launch.num_warps)
    return grad_BTV


class GRPOLossFunction(torch.autograd.Function):
    """autograd wrapper: outputs (loss, logp_BT, kl, clip_frac, ratio, entropy); only loss is differentiable."""

    @staticmethod
    def forward(ctx, logits_BTV, targets_BT, old_BT, ref_BT, adv, mask_BT, cfg: GRPOLossConfig, tp_group, inplace):
        B, T, V = logits_BTV.shape
        shard = vocab_shard(tp_group, V)
        partials_N4 = vocab_partials(logits_BTV, targets_BT, shard.vocab_start, cfg.temperature)
        partials_PN4 = gather_token_state(partials_N4, tp_group, shard)
        logp_N, logz_N, dloss_N, row_sums_B6 = _token_loss(partials_PN4, old_BT, ref_BT, adv, mask_BT, cfg)
        weight_B = sequence_weights(row_sums_B6[:, 0], cfg, T)
        loss = (weight_B * row_sums_B6[:, 1]).sum()
        means_4 = masked_means(row_sums_B6[:, 2:].sum(dim=0), row_sums_B6[:, 0].sum())
        ctx.save_for_backward(logits_BTV, targets_BT, logz_N, dloss_N, weight_B)
        ctx.vocab_start, ctx.temperature, ctx.inplace = shard.vocab_start, cfg.temperature, inplace
        stats = (logp_N.view(B, T), *means_4.unbind(0))
        ctx.mark_non_differentiable(*stats)
        return (loss, *stats)

    @staticmethod
    def backward(ctx, grad_loss, *_unused_stat_grads):
        logits_BTV, targets_BT, logz_N, dloss_N, weight_B = ctx.saved_tensors
        grad_BTV = logits_grad(logits_BTV, targets_BT, logz_N, dloss_N, weight_B, grad_loss, ctx.vocab_start,
                               ctx.temperature, ctx.inplace)
        return grad_BTV, None, None, None, None, None, None, None, None


def grpo_loss(logits, targets, old_logprobs, ref_logprobs, advantages, mask, cfg: GRPOLossConfig, tp_group,
              inplace_backward: bool):
    """Triton path of `r1_megatron.kernels.grpo_loss` (arguments already validated)."""
    loss, logp_BT, *means = GRPOLossFunction.apply(logits, targets, old_logprobs, ref_logprobs, advantages, mask, cfg,
                                                   tp_group, inplace_backward)
    return loss, {"logp": logp_BT, **dict(zip(_STAT_NAMES, means))}

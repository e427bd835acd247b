"""Plain-PyTorch implementations of every kernel, with the kernels' signatures.

They are the CPU fallback, the benchmarks' "eager" provider and, evaluated in float64, the tests' gold. They
compute in the input dtype (promoted to at least fp32 only where noted) exactly as a user would write them, so
they materialise [B, T, V] intermediates; only the Triton kernels obey the memory rule.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from r1_megatron import sampling_noise

from .options import (AdvantageStd, GRPOLossConfig, KLEstimator, LossAgg, check_logprob_inputs, check_loss_inputs,
                      check_rewards, check_rms_norm_inputs, parse_enum)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32, fp64 for fp64: float64 inputs make this the gold reference."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------- advantages
def group_advantages(rewards: torch.Tensor, group_size: int, *, std: str | AdvantageStd = "sample",
                     eps: float = 1e-6) -> torch.Tensor:
    """Â = (r − mean_g) / (std_g + eps) per group of `group_size` adjacent rewards; rewards [B] → [B].

    std "sample" uses N−1, "population" N, "none" gives r − mean (Dr.GRPO). A group whose rewards are all
    equal (including every group of size 1) gets 0. Non-finite rewards raise ValueError.
    """
    kind = parse_enum(AdvantageStd, std, "std")
    check_rewards(rewards, group_size, eps)
    bad = (~torch.isfinite(rewards)).nonzero()
    if bad.numel():
        i = int(bad[0])
        raise ValueError(f"rewards[{i}]={rewards[i].item()} (group {i // group_size}) is not finite")
    out_dtype = rewards.dtype if rewards.is_floating_point() else torch.float32
    r_GS = rewards.to(_compute_dtype(out_dtype)).view(-1, group_size)
    if group_size == 1:
        return torch.zeros_like(rewards, dtype=out_dtype)
    centred_GS = r_GS - r_GS.mean(dim=1, keepdim=True)
    if kind is AdvantageStd.NONE:
        adv_GS = centred_GS
    else:
        std_G1 = r_GS.std(dim=1, correction=1 if kind is AdvantageStd.SAMPLE else 0, keepdim=True)
        adv_GS = centred_GS / (std_G1 + eps)
    all_equal_G1 = r_GS.amax(dim=1, keepdim=True) == r_GS.amin(dim=1, keepdim=True)
    return torch.where(all_equal_G1, torch.zeros_like(adv_GS), adv_GS).view(-1).to(out_dtype)


# ------------------------------------------------------------------------------------------- vocab parallel
class _GatherVocab(torch.autograd.Function):
    """All-gather vocab shards [.., V_local] → [.., V]; backward keeps this rank's slice of the gradient.

    Slicing (not reducing) is right because every rank computes the same loss from the same full logits.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        ctx.rank, ctx.v_local = dist.get_rank(group), x.shape[-1]
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = ctx.rank * ctx.v_local
        return grad[..., start:start + ctx.v_local].contiguous(), None


def gather_vocab(logits: torch.Tensor, tp_group) -> torch.Tensor:
    """Full-vocabulary logits from Megatron's contiguous vocab shards (identity without TP)."""
    if tp_group is None or dist.get_world_size(tp_group) == 1:
        return logits
    return _GatherVocab.apply(logits, tp_group)


def _target_logprobs(logprobs_BTV: torch.Tensor, targets_BT: torch.Tensor) -> torch.Tensor:
    # Ids outside [0, V) are clamped: their logp is undefined and must sit at mask 0.
    ids_BT1 = targets_BT.long().clamp(0, logprobs_BTV.shape[-1] - 1).unsqueeze(-1)
    return logprobs_BTV.gather(-1, ids_BT1).squeeze(-1)


@torch.no_grad()
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                   tp_group=None) -> torch.Tensor:
    """log_softmax(logits / temperature)[target] over the full vocab: [B, T, V_local] → [B, T] (fp32, fp64 for fp64)."""
    check_logprob_inputs(logits, targets)
    GRPOLossConfig(temperature=temperature)  # validates temperature
    logprobs_BTV = torch.log_softmax(gather_vocab(logits, tp_group) / temperature, dim=-1)
    return _target_logprobs(logprobs_BTV, targets).to(_compute_dtype(logits.dtype))


# ---------------------------------------------------------------------------------------------- cross-entropy
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, tp_group=None,
                  inplace_backward: bool = False) -> torch.Tensor:
    """Reference of `r1_megatron.kernels.cross_entropy`: −log_softmax(logits)[target] over the full vocab,
    [B, T, V_local] → [B, T], computed in fp32 (fp64 for fp64) on the gathered logits, as Megatron's
    vocab_parallel_cross_entropy(logits.float()) does. Targets outside [0, V) give 0 and no gradient.
    `inplace_backward` is ignored."""
    check_logprob_inputs(logits, targets)
    full_BTV = gather_vocab(logits, tp_group).to(_compute_dtype(logits.dtype))
    ce_BT = -_target_logprobs(torch.log_softmax(full_BTV, dim=-1), targets)
    counted_BT = (targets >= 0) & (targets < full_BTV.shape[-1])
    return torch.where(counted_BT, ce_BT, torch.zeros_like(ce_BT))


# -------------------------------------------------------------------------------------------------- GRPO loss
def _kl_k1(logp, ref, cfg):
    return logp - ref


def _kl_k2(logp, ref, cfg):
    return 0.5 * (logp - ref) ** 2


def _kl_k3(logp, ref, cfg: GRPOLossConfig):
    """e^d − d − 1 with d = ref − logp clamped to ±kl_log_ratio_clamp, then capped at kl_value_clamp (verl's
    low_var_kl; k3 >= 0, so only the upper bound can bind). torch.clamp passes no gradient where it binds."""
    d = ref - logp
    if cfg.kl_log_ratio_clamp is not None:
        d = torch.clamp(d, -cfg.kl_log_ratio_clamp, cfg.kl_log_ratio_clamp)
    kl = torch.exp(d) - d - 1
    return kl if cfg.kl_value_clamp is None else torch.clamp(kl, max=cfg.kl_value_clamp)


KL_ESTIMATORS = {KLEstimator.K1: _kl_k1, KLEstimator.K2: _kl_k2, KLEstimator.K3: _kl_k3}


def _safe_div(num: torch.Tensor, den):
    """num / den, with an empty denominator (no mask token) giving 0 instead of NaN."""
    if isinstance(den, torch.Tensor):
        den = torch.where(den > 0, den, torch.ones_like(den))
    return num / den


def _agg_token_mean(loss_BT, mask_BT, cfg):
    return _safe_div(loss_BT.sum(), cfg.normalizer or mask_BT.sum())


def _agg_seq_mean_token_mean(loss_BT, mask_BT, cfg):
    len_B = mask_BT.sum(dim=-1)
    seq_mean_B = _safe_div(loss_BT.sum(dim=-1), len_B)
    return _safe_div(seq_mean_B.sum(), cfg.normalizer or (len_B > 0).sum().to(loss_BT.dtype))


def _agg_seq_mean_token_sum(loss_BT, mask_BT, cfg):
    return loss_BT.sum(dim=-1).sum() / (cfg.normalizer or loss_BT.shape[0])


def _agg_seq_mean_token_sum_norm(loss_BT, mask_BT, cfg):
    return loss_BT.sum() / (cfg.normalizer or loss_BT.shape[0] * (cfg.norm_length or loss_BT.shape[1]))


AGGREGATIONS = {
    LossAgg.TOKEN_MEAN: _agg_token_mean,
    LossAgg.SEQ_MEAN_TOKEN_MEAN: _agg_seq_mean_token_mean,
    LossAgg.SEQ_MEAN_TOKEN_SUM: _agg_seq_mean_token_sum,
    LossAgg.SEQ_MEAN_TOKEN_SUM_NORM: _agg_seq_mean_token_sum_norm,
}


def _masked(x_BT, mask_BT):
    # where() rather than a product so that garbage (inf/NaN) at mask-0 positions cannot leak into sums.
    return torch.where(mask_BT != 0, x_BT * mask_BT, torch.zeros_like(x_BT))


def _masked_mean(x_BT, mask_BT):
    return _safe_div(_masked(x_BT, mask_BT).sum(), mask_BT.sum()).detach()


def _ratio(log_ratio_BT, cfg: GRPOLossConfig):
    """(ρ = exp(clamp(logp − old, ±log_ratio_clamp)), clamped): the clamp bounds ρ (e^20 ≈ 4.9e8 at verl's 20)
    where old log-probs are stale or broken, and passes no gradient where it binds."""
    if cfg.log_ratio_clamp is None:
        return torch.exp(log_ratio_BT), torch.zeros_like(log_ratio_BT, dtype=torch.bool)
    c = cfg.log_ratio_clamp
    return torch.exp(torch.clamp(log_ratio_BT, -c, c)), (log_ratio_BT > c) | (log_ratio_BT < -c)


def _surrogate(ratio_BT, adv_BT, cfg: GRPOLossConfig):
    """(surrogate, clipped): min(ρA, clip(ρ)A), and max(·, c·A) where A < 0 under dual clip c."""
    unclipped_BT = ratio_BT * adv_BT
    clipped_obj_BT = torch.clamp(ratio_BT, cfg.clip_low, cfg.clip_high) * adv_BT
    surr_BT = torch.min(unclipped_BT, clipped_obj_BT)
    clipped_BT = clipped_obj_BT < unclipped_BT
    if cfg.dual_clip is not None:
        floor_BT = cfg.dual_clip * adv_BT
        dual_BT = (adv_BT < 0) & (floor_BT > surr_BT)
        surr_BT = torch.where(adv_BT < 0, torch.max(surr_BT, floor_BT), surr_BT)
        clipped_BT = clipped_BT | dual_BT
    return surr_BT, clipped_BT


def grpo_loss(logits, targets, old_logprobs, ref_logprobs, advantages, mask, *, clip_eps_low=0.2,
              clip_eps_high=None, dual_clip=None, kl_coef=0.001, kl_estimator="k3", temperature=1.0,
              loss_agg="seq-mean-token-mean", norm_length=None, normalizer=None, log_ratio_clamp=20.0,
              kl_log_ratio_clamp=20.0, kl_value_clamp=10.0, tp_group=None, inplace_backward=False):
    """Reference GRPO loss; see `r1_megatron.kernels.grpo_loss` for the contract. `inplace_backward` is ignored.

    logp = log_softmax(logits/τ)[target]; ρ = exp(clamp(logp − old, ±log_ratio_clamp)); per-token loss =
    −surrogate(ρ, A) + β·KL; reduced over mask tokens by `loss_agg`. Returns (loss, stats).
    """
    cfg = GRPOLossConfig(clip_eps_low, clip_eps_high, dual_clip, kl_coef, kl_estimator, temperature, loss_agg,
                         norm_length, normalizer, log_ratio_clamp, kl_log_ratio_clamp, kl_value_clamp)
    check_loss_inputs(logits, targets, old_logprobs, ref_logprobs, advantages, mask)
    dtype = _compute_dtype(logits.dtype)
    logprobs_BTV = torch.log_softmax(gather_vocab(logits, tp_group) / cfg.temperature, dim=-1)
    logp_BT = _target_logprobs(logprobs_BTV, targets).to(dtype)
    mask_BT = mask.to(dtype)
    adv_BT = advantages.to(dtype)
    adv_BT = adv_BT[:, None].expand_as(logp_BT) if adv_BT.dim() == 1 else adv_BT
    ratio_BT, clamped_BT = _ratio(logp_BT - old_logprobs.to(dtype), cfg)
    surr_BT, clipped_BT = _surrogate(ratio_BT, adv_BT, cfg)
    clipped_BT = clipped_BT | clamped_BT  # the clamp cut the gradient too
    token_loss_BT = -surr_BT
    kl_BT = torch.zeros_like(logp_BT)
    if ref_logprobs is not None:
        kl_BT = KL_ESTIMATORS[cfg.kl_estimator](logp_BT, ref_logprobs.to(dtype), cfg)
        if cfg.kl_coef:
            token_loss_BT = token_loss_BT + cfg.kl_coef * kl_BT
    loss = AGGREGATIONS[cfg.loss_agg](_masked(token_loss_BT, mask_BT), mask_BT, cfg)
    with torch.no_grad():
        entropy_BT = -(logprobs_BTV.exp() * logprobs_BTV).sum(dim=-1).to(dtype)
    stats = {
        "logp": logp_BT.detach(),
        "clip_frac": _masked_mean(clipped_BT.to(dtype), mask_BT),
        "kl": _masked_mean(kl_BT, mask_BT),
        "ratio": _masked_mean(ratio_BT, mask_BT),
        "entropy": _masked_mean(entropy_BT, mask_BT),
    }
    return loss, stats


# ----------------------------------------------------------------------------------------------------- RMSNorm
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """y = x / sqrt(mean(x², -1) + eps) · weight, computed in ≥ fp32, returned in x's dtype; x [..., H], weight [H]."""
    check_rms_norm_inputs(x, weight, eps)
    x_c = x.to(_compute_dtype(x.dtype))
    y = x_c * torch.rsqrt(x_c.pow(2).mean(dim=-1, keepdim=True) + eps) * weight.to(x_c.dtype)
    return y.to(x.dtype)


# ------------------------------------------------------------------------------------------- decode attention
def decode_attention(q_BND: torch.Tensor, k_cache_PSGD: torch.Tensor, v_cache_PSGE: torch.Tensor,
                     block_table_BM: torch.Tensor, seq_lens_B: torch.Tensor, softmax_scale: float,
                     num_splits: int | None = None) -> torch.Tensor:
    """Reference of `r1_megatron.kernels.decode_attention` (arguments as it validates them; float64 too):
    out[b, n] = softmax(scale · q[b, n] · K_bᵀ) V_b over keys t < seq_lens_B[b], with K_b [M·S, G, D] and
    V_b [M·S, G, E] gathered through block_table_BM[b], in fp32 (fp64 for fp64), returned in q's dtype.
    Vectorised over rows; table entries past a row's length are replaced by block 0 and the keys/values past
    it are masked out (a fresh cache block may hold NaN). A row of length 0 gives zeros. `num_splits` is
    ignored (one pass)."""
    B, N, D = q_BND.shape
    _, S, G, E = v_cache_PSGE.shape
    M = block_table_BM.shape[1]
    dtype = _compute_dtype(q_BND.dtype)
    lens_B1 = seq_lens_B.long()[:, None]
    used_BM = torch.arange(M, device=q_BND.device) * S < lens_B1
    blocks_X = torch.where(used_BM, block_table_BM.long(), 0).view(-1)
    attended_BT = torch.arange(M * S, device=q_BND.device) < lens_B1
    # index_select, matmul and in-place masking: this is the CPU decode path, and they are 1.3-3.5x faster
    # than advanced indexing, einsum and out-of-place masks at decode shapes
    keys_BGDT = k_cache_PSGD.index_select(0, blocks_X).to(dtype).view(B, M * S, G, D).permute(0, 2, 3, 1)
    values_BTGE = v_cache_PSGE.index_select(0, blocks_X).to(dtype).view(B, M * S, G, E)
    values_BTGE.masked_fill_(~attended_BT[:, :, None, None], 0)  # 0 · NaN would be NaN
    q_BGRD = q_BND.to(dtype).reshape(B, G, N // G, D)  # query head n = g · (N / G) + r reads kv head g
    scores_BGRT = torch.matmul(q_BGRD, keys_BGDT).mul_(softmax_scale)
    probs_BGRT = scores_BGRT.masked_fill_(~attended_BT[:, None, None, :], float("-inf")).softmax(dim=-1)
    probs_BGRT.masked_fill_((lens_B1 == 0)[:, :, None, None], 0)  # length 0: softmax of all -inf is NaN
    out_BGRE = torch.matmul(probs_BGRT, values_BTGE.transpose(1, 2))
    return out_BGRE.reshape(B, N, E).to(q_BND.dtype)


# ------------------------------------------------------------------------------------------------- sampling
# The sampling reference is not a float64 gold: the noise contract (r1_megatron/sampling_noise.py) fixes fp32
# scores, so the kernel must match these fp32 torch ops token for token (and logprobs to fp32 rounding).
SAMPLING_PARTIALS = 5  # per row and vocab range: best score, its token id, m, Σ exp(s − m), the token's s
NO_TOKEN = 2**31 - 1  # the token id of a range with no column: loses every tie against a real id
LOGSUMEXP_FLOOR = -1.0e30  # m of a range whose s are all −inf, so that exp(s − m) is 0 rather than NaN


def scoring_temperature(temperature_B: torch.Tensor) -> torch.Tensor:
    """T' = T, or 1 for greedy rows (T == 0): the temperature of the logprobs and of top-p. fp32 [B]."""
    temperature_B = temperature_B.to(torch.float32)
    return torch.where(temperature_B == 0, 1.0, temperature_B)


def _scaled_logits(logits_BV: torch.Tensor, temperature_B: torch.Tensor) -> torch.Tensor:
    """s = fp32(logits) / T', a new fp32 [B, V] tensor (half logits are promoted inside the division: one pass)."""
    if logits_BV.dtype == torch.float64:
        logits_BV = logits_BV.to(torch.float32)
    return logits_BV / scoring_temperature(temperature_B)[:, None]


def _gumbel_scores_(s_BV: torch.Tensor, logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                    steps_B: torch.Tensor, tau_B: torch.Tensor | None, vocab_start: int) -> torch.Tensor:
    """Turn s_BV = logits/T' into the Gumbel-max scores in place and return it: s + g(seed, step, id) on rows with
    T > 0, s itself on greedy rows, −inf where logit < τ (column j is token id vocab_start + j).

    A truncated row needs the noise of its kept ids only: when they are few, g is drawn at those (row, id) pairs
    (one Philox call each) instead of for the whole [B, V] (one call per 4 ids); the scores are the same."""
    sampled_B = temperature_B > 0
    masked_BV = None if tau_B is None else logits_BV < tau_B[:, None]  # `<` keeps NaN logits, as the contract
    if masked_BV is not None:
        b_N, v_N = (~masked_BV & sampled_B[:, None]).nonzero(as_tuple=True)
        if 8 * b_N.numel() < int(sampled_B.sum()) * s_BV.shape[1]:
            s_BV[b_N, v_N] += sampling_noise.gumbel_noise_at(seeds_B[b_N], steps_B[b_N], v_N + vocab_start)
            return s_BV.masked_fill_(masked_BV, float("-inf"))
    vocab_end = vocab_start + s_BV.shape[1]
    if bool(sampled_B.all()):
        s_BV += sampling_noise.gumbel_noise(seeds_B, steps_B, vocab_start, vocab_end)
    elif bool(sampled_B.any()):
        rows_R = sampled_B.nonzero()[:, 0]
        s_BV[rows_R] += sampling_noise.gumbel_noise(seeds_B[rows_R], steps_B[rows_R], vocab_start, vocab_end)
    return s_BV if masked_BV is None else s_BV.masked_fill_(masked_BV, float("-inf"))


def sample_tokens(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor, steps_B: torch.Tensor,
                  tau_B: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `r1_megatron.kernels.sample_tokens`: (tokens_B int64, logprobs_B fp32).

    token = argmax_v score_v (NaN first, ties to the lowest id) with score = fp32(logit)/T + g(seed, step, v),
    fp32(logit) on greedy rows, −inf where logit < τ; logprob = log_softmax(fp32(logits) / T')[token], T' = T or 1
    when greedy, over the whole (untruncated) vocabulary."""
    s_BV = _scaled_logits(logits_BV, temperature_B)
    logprobs_BV = torch.log_softmax(s_BV, dim=1)
    tokens_B = _gumbel_scores_(s_BV, logits_BV, temperature_B, seeds_B, steps_B, tau_B, 0).argmax(dim=1)
    return tokens_B, logprobs_BV.gather(1, tokens_B[:, None])[:, 0]


def sampling_partials(logits_BV: torch.Tensor, temperature_B: torch.Tensor, seeds_B: torch.Tensor,
                      steps_B: torch.Tensor, tau_B: torch.Tensor | None, vocab_start: int,
                      vocab_end: int) -> torch.Tensor:
    """Reference of `r1_megatron.kernels.sampling_partials`: fp64 [B, 1, 5] over token ids [vocab_start,
    vocab_end), held by the first vocab_end − vocab_start columns of logits_BV (the rest, e.g. Megatron's vocab
    padding, is ignored): (best score, its global id, m = max s, Σ exp(s − m), s of that id), s = logits / T',
    m floored at LOGSUMEXP_FLOOR. An empty range gives (−inf, NO_TOKEN, LOGSUMEXP_FLOOR, 0, 0)."""
    B, n_valid = logits_BV.shape[0], max(vocab_end - vocab_start, 0)
    if n_valid == 0:
        empty = torch.tensor([float("-inf"), NO_TOKEN, LOGSUMEXP_FLOOR, 0.0, 0.0], dtype=torch.float64)
        return empty.to(logits_BV.device).expand(B, 1, SAMPLING_PARTIALS).clone()
    logits_BV = logits_BV[:, :n_valid]
    s_BV = _scaled_logits(logits_BV, temperature_B)
    m_B = s_BV.amax(dim=1).clamp(min=LOGSUMEXP_FLOOR)  # clamp keeps NaN, so a NaN logit still poisons its row
    sumexp_B = (s_BV - m_B[:, None]).exp().sum(dim=1)
    scores_BV = _gumbel_scores_(s_BV.clone(), logits_BV, temperature_B, seeds_B, steps_B, tau_B, vocab_start)
    token_B1 = scores_BV.argmax(dim=1, keepdim=True)
    columns = (scores_BV.gather(1, token_B1)[:, 0], token_B1[:, 0] + vocab_start, m_B, sumexp_B,
               s_BV.gather(1, token_B1)[:, 0])
    return torch.stack([c.to(torch.float64) for c in columns], dim=1)[:, None]


def combine_sampling_partials(partials_BN5: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference of `r1_megatron.kernels.combine_sampling_partials`: (tokens_B int64, logprobs_B fp32) from N
    partials per row, in any order: the best (score, id) in torch.argmax's order, and
    log p = s_token − (M + log Σ_n sumexp_n · exp(m_n − M)), M = max_n m_n, in fp64."""
    score_NB, token_NB, m_NB, sumexp_NB, s_NB = partials_BN5.permute(2, 1, 0)
    token_B = sampling_noise.combine_vocab_shards(score_NB, token_NB)
    s_token_B = torch.where(token_NB == token_B, s_NB, 0.0).sum(dim=0)
    m_B = m_NB.amax(dim=0)
    log_z_B = m_B + (sumexp_NB * (m_NB - m_B).exp()).sum(dim=0).log()
    return token_B.to(torch.int64), (s_token_B - log_z_B).to(torch.float32)

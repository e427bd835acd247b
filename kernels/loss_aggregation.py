"""Per-sequence weights that turn masked per-token losses into the scalar GRPO loss (Triton path).

Every aggregation mode is linear in the masked per-token losses ℓ_bt:  loss = Σ_b w_b Σ_t mask_bt·ℓ_bt,
so the fused kernel only needs one fp32 weight per sequence in the backward. Shapes: len_B = Σ_t mask_bt.
"""
from __future__ import annotations

import torch

from .options import GRPOLossConfig, LossAgg


def _inv(den: torch.Tensor) -> torch.Tensor:
    """1/den, and 0 where den is 0 (an empty sequence or batch contributes nothing instead of NaN)."""
    return torch.where(den > 0, 1.0 / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))


def _token_mean(len_B, cfg, T):
    """w_b = 1 / Σ_b len_b (or 1/normalizer)."""
    den = torch.full_like(len_B, cfg.normalizer) if cfg.normalizer else len_B.sum()
    return _inv(den) * torch.ones_like(len_B)


def _seq_mean_token_mean(len_B, cfg, T):
    """w_b = 1 / (len_b · #{b: len_b > 0}) (or 1/(len_b·normalizer)); empty sequences get 0."""
    n_seq = torch.full_like(len_B[:1], cfg.normalizer) if cfg.normalizer else (len_B > 0).sum().to(len_B.dtype)
    return _inv(len_B) * _inv(n_seq)


def _seq_mean_token_sum(len_B, cfg, T):
    """w_b = 1 / B (or 1/normalizer)."""
    return torch.full_like(len_B, 1.0 / (cfg.normalizer or len_B.shape[0]))


def _seq_mean_token_sum_norm(len_B, cfg, T):
    """w_b = 1 / (B · norm_length) with norm_length defaulting to T (or 1/normalizer)."""
    return torch.full_like(len_B, 1.0 / (cfg.normalizer or len_B.shape[0] * (cfg.norm_length or T)))


SEQUENCE_WEIGHTS = {
    LossAgg.TOKEN_MEAN: _token_mean,
    LossAgg.SEQ_MEAN_TOKEN_MEAN: _seq_mean_token_mean,
    LossAgg.SEQ_MEAN_TOKEN_SUM: _seq_mean_token_sum,
    LossAgg.SEQ_MEAN_TOKEN_SUM_NORM: _seq_mean_token_sum_norm,
}


def sequence_weights(len_B: torch.Tensor, cfg: GRPOLossConfig, T: int) -> torch.Tensor:
    """w_B (fp32, contiguous: the backward kernel indexes it) for `cfg.loss_agg`, given the mask sums len_B."""
    return SEQUENCE_WEIGHTS[cfg.loss_agg](len_B, cfg, T).contiguous()


def masked_means(sums_K: torch.Tensor, total_mask: torch.Tensor) -> torch.Tensor:
    """Σ mask·x / Σ mask for K statistics at once; 0 when no token counts."""
    return sums_K * _inv(total_mask)

"""Public GRPO loss and token log-probabilities from (vocab-parallel) logits; dispatches Triton or reference."""
from __future__ import annotations

import torch

from . import reference
from .backend import Backend, select_backend, triton_module
from .options import GRPOLossConfig, check_logprob_inputs, check_loss_inputs
from .vocab_parallel import gather_token_state, vocab_shard


def grpo_loss(logits: torch.Tensor, targets: torch.Tensor, old_logprobs: torch.Tensor,
              ref_logprobs: torch.Tensor | None, advantages: torch.Tensor, mask: torch.Tensor, *,
              clip_eps_low: float = 0.2, clip_eps_high: float | None = None, dual_clip: float | None = None,
              kl_coef: float = 0.001, kl_estimator: str = "k3", temperature: float = 1.0,
              loss_agg: str = "seq-mean-token-mean", norm_length: int | None = None,
              normalizer: float | None = None, log_ratio_clamp: float | None = 20.0,
              kl_log_ratio_clamp: float | None = 20.0, kl_value_clamp: float | None = 10.0, tp_group=None,
              inplace_backward: bool = False):
    """GRPO / DAPO / Dr.GRPO policy loss straight from logits → (loss, stats).

    Shapes: logits [B, T, V_local] (bf16/fp16/fp32; this rank's contiguous vocab slice under `tp_group`),
    targets [B, T] global ids, old_logprobs / ref_logprobs [B, T] fp32, advantages [B] or [B, T], mask [B, T].

        logp = log_softmax(logits/τ)[target] (full vocab),  ρ = exp(clamp(logp − old, ±log_ratio_clamp))
        s    = min(ρA, clip(ρ, 1−ε_low, 1+ε_high)A);  with dual_clip c and A < 0: s = max(s, cA)
        ℓ    = −s + kl_coef·KL(logp, ref)   (KL skipped when ref_logprobs is None)
    with k3 = e^d − d − 1, d = clamp(ref − logp, ±kl_log_ratio_clamp), capped at kl_value_clamp (the guards of
    verl and NeMo-RL, with their defaults; None turns one off; no gradient flows where a clamp binds, as with
    torch.clamp), then reduced over mask tokens by `loss_agg` ("token-mean", "seq-mean-token-mean" (empty
    sequences left out), "seq-mean-token-sum", "seq-mean-token-sum-norm" = Σℓ/(B·norm_length)); `normalizer`
    replaces the denominator. stats: "logp" [B, T] fp32, and masked means "clip_frac" (tokens whose surrogate
    gradient a clip or the log-ratio clamp cut), "kl", "ratio", "entropy" (full vocabulary), all detached. The
    Triton path keeps only per-token fp32 state, all-gathers 4 fp32 per token under TP in forward, none in
    backward; `inplace_backward=True` writes the gradient into the logits buffer (the logits are then overwritten).
    """
    cfg = GRPOLossConfig(clip_eps_low, clip_eps_high, dual_clip, kl_coef, kl_estimator, temperature, loss_agg,
                         norm_length, normalizer, log_ratio_clamp, kl_log_ratio_clamp, kl_value_clamp)
    check_loss_inputs(logits, targets, old_logprobs, ref_logprobs, advantages, mask)
    if select_backend(logits, targets, old_logprobs, ref_logprobs, advantages, mask) is Backend.TORCH:
        return reference.grpo_loss(logits, targets, old_logprobs, ref_logprobs, advantages, mask,
                                   **_kwargs(cfg), tp_group=tp_group)
    return triton_module("grpo_loss_triton").grpo_loss(logits, targets, old_logprobs, ref_logprobs, advantages,
                                                        mask, cfg, tp_group, inplace_backward)


def _kwargs(cfg: GRPOLossConfig) -> dict:
    return {f: getattr(cfg, f) for f in cfg.__dataclass_fields__}


@torch.no_grad()
def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, temperature: float = 1.0,
                   tp_group=None) -> torch.Tensor:
    """log_softmax(logits / temperature)[target] over the full vocabulary: [B, T, V_local] → [B, T] fp32.

    For old-policy and reference log-probabilities (no grad). The Triton path streams the logits once and keeps
    4 fp32 per token; under TP it all-gathers those (one collective).
    """
    check_logprob_inputs(logits, targets)
    GRPOLossConfig(temperature=temperature)  # validates temperature
    if select_backend(logits, targets) is Backend.TORCH:
        return reference.token_logprobs(logits, targets, temperature=temperature, tp_group=tp_group).float()
    stats = triton_module("softmax_stats_triton")
    shard = vocab_shard(tp_group, logits.shape[-1])
    partials_N4 = stats.vocab_partials(logits, targets, shard.vocab_start, temperature)
    logp_N = stats.logprobs_from_partials(gather_token_state(partials_N4, tp_group, shard))
    return logp_N.view(logits.shape[:2])

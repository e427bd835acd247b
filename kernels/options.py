"""Typed options shared by the kernels and the reference: enums for every variant and the validated loss config.

Variants are enums (registries are keyed by them) so that a typo fails once, here, with a ValueError naming
the bad value, instead of silently falling through a string branch.
"""
from __future__ import annotations

import dataclasses
import enum
import math

import torch


class AdvantageStd(str, enum.Enum):
    """Denominator of the group-normalised advantage: sample (N-1) std, population (N) std, or none (Dr.GRPO)."""

    SAMPLE = "sample"
    POPULATION = "population"
    NONE = "none"


class KLEstimator(str, enum.Enum):
    """Per-token KL(π_θ || π_ref) estimators of Schulman's note, with d = ref - logp."""

    K1 = "k1"  # logp - ref
    K2 = "k2"  # (logp - ref)^2 / 2
    K3 = "k3"  # exp(d) - d - 1


class LossAgg(str, enum.Enum):
    """How masked per-token losses are reduced to one scalar."""

    TOKEN_MEAN = "token-mean"
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"


def parse_enum(kind: type[enum.Enum], value, field: str):
    """Return `kind(value)`, or raise ValueError naming the field, the bad value and the allowed ones."""
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ValueError(f"{field}={value!r} is not one of {allowed}") from None


def _require(ok: bool, field: str, value, rule: str) -> None:
    if not ok:
        raise ValueError(f"{field}={value!r}: {rule}")


@dataclasses.dataclass(frozen=True)
class GRPOLossConfig:
    """The keyword options of `grpo_loss`, validated (see `grpo_loss` for their meaning)."""

    clip_eps_low: float = 0.2
    clip_eps_high: float | None = None
    dual_clip: float | None = None
    kl_coef: float = 0.001
    kl_estimator: KLEstimator = KLEstimator.K3
    temperature: float = 1.0
    loss_agg: LossAgg = LossAgg.SEQ_MEAN_TOKEN_MEAN
    norm_length: int | None = None
    normalizer: float | None = None
    # numerical guards (verl's and NeMo-RL's defaults; None: off). ρ = exp(clamp(logp − old, ±log_ratio_clamp));
    # k3 = e^d − d − 1 with d = clamp(ref − logp, ±kl_log_ratio_clamp), then min(k3, kl_value_clamp)
    log_ratio_clamp: float | None = 20.0
    kl_log_ratio_clamp: float | None = 20.0
    kl_value_clamp: float | None = 10.0

    def __post_init__(self) -> None:
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("kl_estimator", parse_enum(KLEstimator, self.kl_estimator, "kl_estimator"))
        set_("loss_agg", parse_enum(LossAgg, self.loss_agg, "loss_agg"))
        # ε_low >= 1 is allowed: the ratio is positive, so the lower bound 1 - ε <= 0 then never binds (R1's
        # stage-1 RL uses ε = 10, which leaves the ratio unclipped in practice)
        _require(math.isfinite(self.clip_eps_low) and self.clip_eps_low >= 0, "clip_eps_low", self.clip_eps_low,
                 "must be a finite number >= 0")
        if self.clip_eps_high is None:
            set_("clip_eps_high", self.clip_eps_low)
        _require(math.isfinite(self.clip_eps_high) and self.clip_eps_high >= 0, "clip_eps_high",
                 self.clip_eps_high, "must be a finite number >= 0")
        _require(self.dual_clip is None or (math.isfinite(self.dual_clip) and self.dual_clip > 1), "dual_clip",
                 self.dual_clip, "must be None or a finite number > 1")
        _require(math.isfinite(self.kl_coef) and self.kl_coef >= 0, "kl_coef", self.kl_coef, "must be >= 0")
        _require(math.isfinite(self.temperature) and self.temperature > 0, "temperature", self.temperature,
                 "must be > 0")
        _require(self.norm_length is None or (isinstance(self.norm_length, int) and self.norm_length > 0),
                 "norm_length", self.norm_length, "must be None or a positive int")
        _require(self.normalizer is None or (math.isfinite(self.normalizer) and self.normalizer > 0),
                 "normalizer", self.normalizer, "must be None or a finite number > 0")
        for name in ("log_ratio_clamp", "kl_log_ratio_clamp", "kl_value_clamp"):
            # 0 would freeze every ratio at 1 (or every KL at 0) and zero its gradient: a mistake, not "off"
            bound = getattr(self, name)
            _require(bound is None or (not isinstance(bound, bool) and math.isfinite(bound) and bound > 0), name,
                     bound, "must be None (off) or a finite number > 0")

    @property
    def clip_low(self) -> float:
        return 1.0 - self.clip_eps_low

    @property
    def clip_high(self) -> float:
        return 1.0 + self.clip_eps_high


def check_logprob_inputs(logits: torch.Tensor, targets: torch.Tensor) -> None:
    """Shapes and dtypes shared by grpo_loss and token_logprobs; raises ValueError naming the argument."""
    if logits.dim() != 3 or not logits.is_floating_point():
        raise ValueError(f"logits: expected a float tensor [B, T, V_local], got {tuple(logits.shape)} {logits.dtype}")
    if logits.shape[-1] == 0 or logits.stride(-1) != 1:
        raise ValueError(f"logits: the vocab dim must be non-empty and contiguous, got shape {tuple(logits.shape)} "
                         f"strides {logits.stride()}")
    if tuple(targets.shape) != tuple(logits.shape[:2]) or targets.is_floating_point():
        raise ValueError(f"targets: expected integer ids of shape {tuple(logits.shape[:2])}, "
                         f"got {tuple(targets.shape)} {targets.dtype}")


def check_loss_inputs(logits, targets, old_logprobs, ref_logprobs, advantages, mask) -> None:
    """Validate grpo_loss tensor arguments against logits [B, T, V_local]; raises ValueError naming the argument."""
    check_logprob_inputs(logits, targets)
    bt = tuple(logits.shape[:2])
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("mask", mask)):
        if t is not None and tuple(t.shape) != bt:
            raise ValueError(f"{name}: expected shape {bt}, got {tuple(t.shape)}")
    if tuple(advantages.shape) not in (bt[:1], bt):
        raise ValueError(f"advantages: expected shape {bt[:1]} or {bt}, got {tuple(advantages.shape)}")
    for name, t in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs), ("advantages", advantages)):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name}: expected a float tensor, got {t.dtype}")


def check_rewards(rewards: torch.Tensor, group_size: int, eps: float) -> None:
    """Validate group_advantages arguments; raises ValueError naming the bad one."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards: expected a 1-D tensor [B], got shape {tuple(rewards.shape)}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size={group_size!r}: must be a positive int")
    if rewards.numel() % group_size:
        raise ValueError(f"rewards: length {rewards.numel()} is not a multiple of group_size={group_size}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r}: must be a finite number >= 0")


def check_rms_norm_inputs(x: torch.Tensor, weight: torch.Tensor, eps: float) -> None:
    """Validate rms_norm arguments; raises ValueError naming the bad one."""
    if not x.is_floating_point() or x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x: expected a float tensor [..., H], got {tuple(x.shape)} {x.dtype}")
    if tuple(weight.shape) != (x.shape[-1],) or not weight.is_floating_point():
        raise ValueError(f"weight: expected a float tensor of shape ({x.shape[-1]},), got {tuple(weight.shape)}")
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps={eps!r}: must be a finite number >= 0")

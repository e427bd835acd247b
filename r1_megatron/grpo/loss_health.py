"""Warnings for GRPO steps whose clip fraction or train/rollout logprob mismatch leaves its healthy band.

Neither stops the run (both can leave their band for a step in a healthy run); each sets a 0/1 step metric and says
one line when its warning starts and one when it ends, so a long bad stretch costs two lines, not one per step.

- `loss/clip_frac`: the fraction of loss tokens whose surrogate gradient a clip (or the log-ratio clamp) cut, over
  the step's updates. The first update of a step is on policy (ρ = 1, nothing clipped); later mini-batches and
  epochs see the ratio move. Default band: at most 0.2, chosen by reasoning rather than taken from a peer (verl's
  compute_policy_loss logs pg_clipfrac without a threshold): with ε = 0.2 a token is clipped once its probability
  moved more than 20% the way its advantage pushes, and when a fifth of the tokens are past that the update left
  the trust region for much of the batch (lower the learning rate, or fewer mini-batches or epochs).
- `mismatch/mean`: mean |train-forward logprob − rollout logprob| over the on-policy loss tokens. The engine runs
  the trainer's own weights, so this is reduction-order noise (≤ 1e-5 in fp32, tested). Default band: at most
  0.05, from NeMo-RL, several of whose functional tests require token_mult_prob_error = mean e^|Δ| < 1.05 (by
  Jensen, mean |Δ| > ln 1.05 ≈ 0.049 already puts that error above 1.05).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping


@dataclasses.dataclass(frozen=True)
class HealthBand:
    """A step metric that should stay <= `maximum` (None: never warned about); `warning` is its 0/1 metric."""

    metric: str
    warning: str
    setting: str  # the config key of `maximum`, named in the warning
    maximum: float | None
    advice: str


def check_bands(clip_fraction_max: float | None, mismatch_max: float | None) -> None:
    """ValueError naming the config key of a band that is not null or a number in its range."""
    for name, value, top in (("health_clip_fraction_max", clip_fraction_max, 1.0),
                             ("health_mismatch_max", mismatch_max, math.inf)):
        if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                      and 0 <= value <= top and math.isfinite(value)):
            rule = "a fraction in [0, 1]" if top == 1.0 else "a finite number >= 0"
            raise ValueError(f"algorithm.{name}={value!r}: must be null (no warning) or {rule}")


class LossHealth:
    """`check(step, metrics)` once per step, on the step's metrics reduced over ranks (so every rank agrees):
    returns the warning metrics and says when a warning starts or ends."""

    def __init__(self, clip_fraction_max: float | None, mismatch_max: float | None, say: Callable[[str], None]):
        check_bands(clip_fraction_max, mismatch_max)
        self.bands = tuple(band for band in (
            HealthBand("loss/clip_frac", "health/clip_fraction_warning", "algorithm.health_clip_fraction_max",
                       clip_fraction_max, "the policy moved far from the rollout policy within the step: lower "
                       "optimizer.lr, or fewer algorithm.mini_batches or algorithm.epochs"),
            HealthBand("mismatch/mean", "health/mismatch_warning", "algorithm.health_mismatch_max", mismatch_max,
                       "the training forward and the rollout engine disagree on the same weights' logprobs (a "
                       "precision, kernel or layout difference), so the ratio no longer starts at 1"),
        ) if band.maximum is not None)
        self.say = say
        self.since: dict[str, int] = {}  # warning metric -> the step its warning started

    def check(self, step: int, metrics: Mapping[str, float]) -> dict[str, float]:
        out = {}
        for band in self.bands:
            value = metrics.get(band.metric, 0.0)
            bad = not value <= band.maximum  # NaN is outside every band
            out[band.warning] = float(bad)
            started = self.since.get(band.warning)
            if bad and started is None:
                self.since[band.warning] = step
                self.say(f"warning: step {step}: {band.metric}={value:.4g} is above its healthy band "
                         f"({band.setting}={band.maximum}): {band.advice}")
            elif not bad and started is not None:
                del self.since[band.warning]
                self.say(f"step {step}: {band.metric}={value:.4g} is back within its healthy band "
                         f"({band.setting}={band.maximum}) after {step - started} step(s) outside it")
        return out

"""Train/rollout log-probability mismatch: how far the trainer's forward is from the engine's sampled logprobs.

The engine samples with the trainer's own weights and returns log_softmax(logits / T)[token] before truncation,
so on the same weights this is reduction-order noise (~1e-6 in fp32); a large value means the two forwards
disagree (a stale weight, a different temperature, a kernel bug) and importance ratios are being biased.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class LogprobMismatch(NamedTuple):
    max_abs: float
    mean_abs: float


def logprob_mismatch(rollout_logprobs_N: torch.Tensor, train_logprobs_N: torch.Tensor) -> LogprobMismatch:
    """max and mean of |rollout − train| over N completion tokens (fp32 or fp64 [N], same order); (0, 0) if N = 0."""
    if rollout_logprobs_N.shape != train_logprobs_N.shape or rollout_logprobs_N.dim() != 1:
        raise ValueError(f"logprob_mismatch needs two [N] tensors, got {tuple(rollout_logprobs_N.shape)} and "
                         f"{tuple(train_logprobs_N.shape)}")
    if rollout_logprobs_N.numel() == 0:
        return LogprobMismatch(0.0, 0.0)
    diff_N = (rollout_logprobs_N.double() - train_logprobs_N.double()).abs()
    return LogprobMismatch(diff_N.max().item(), diff_N.mean().item())

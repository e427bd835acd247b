"""Reward failures per step, and the stop for a run whose rewards fail on every sample.

The reward runner scores a failed sample 0 (a reward raised, ran past the timeout, or its worker died) and goes
on, which is right for the odd bad completion. A reward that fails on *every* sample (a plugin bug, a missing
record field, tests in a format the reward does not read) makes the run train on no signal while it looks
healthy; after `rewards.max_failed_steps` such steps in a row the run stops and says why.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from r1_megatron.rewards.runner import RewardBatch

    from r1_megatron.training.step_stats import StepStats

# the per-step failure counts RewardBatch.metrics() gives (totals over the step's samples and DP ranks)
FAILURE_METRICS = ("reward/errors", "reward/timeouts", "reward/crashes")
SAMPLES_METRIC = "reward/samples"
RETRIES_METRIC = "reward/retries"  # samples scored again after reaching the wall backstop (not failures)


class RewardFailure(RuntimeError):
    """The run's rewards failed on every sample for rewards.max_failed_steps steps in a row (a one-line message;
    the CLI prints it and exits non-zero)."""


class RewardHealth:
    """`record(stats, batch)` for every scored batch of a step, `end_step(step, metrics)` once the step's metrics
    are reduced over data-parallel ranks: every rank sees the same totals, so all ranks stop together."""

    def __init__(self, max_failed_steps: int):
        self.max_failed_steps = max_failed_steps  # 0: never stop
        self.failed_steps = 0  # consecutive steps in which every sample failed, over all ranks
        self.first_error: str | None = None  # this rank's first failure of those steps, one line
        self._step_error: str | None = None

    def record(self, stats: StepStats, batch: RewardBatch) -> None:
        counts = batch.metrics()
        stats.total(SAMPLES_METRIC, float(len(batch.failure)))
        for metric in (*FAILURE_METRICS, RETRIES_METRIC):
            stats.total(metric, counts[metric])
        if self._step_error is None:
            self._step_error = next((e.partition("\n")[0] for e in batch.errors if e), None)

    def end_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Raises RewardFailure on the max_failed_steps-th step in a row whose samples all failed."""
        samples = metrics.get(SAMPLES_METRIC, 0.0)
        failed = sum(metrics.get(m, 0.0) for m in FAILURE_METRICS)
        step_error, self._step_error = self._step_error, None
        if not (samples > 0 and failed >= samples):
            self.failed_steps, self.first_error = 0, None
            return
        self.failed_steps += 1
        self.first_error = self.first_error or step_error
        if self.max_failed_steps and self.failed_steps >= self.max_failed_steps:
            raise RewardFailure(self._message(step, metrics))

    def _message(self, step: int, metrics: Mapping[str, float]) -> str:
        first = step - self.failed_steps + 1
        steps = f"steps {first}-{step}" if first < step else f"step {step}"
        counts = ", ".join(f"{int(metrics.get(m, 0.0))} {m.removeprefix('reward/')}" for m in FAILURE_METRICS)
        return (f"rewards failed on every sample of {steps} ({counts} in step {step}; rewards.max_failed_steps="
                f"{self.max_failed_steps}); first failure: {self.first_error or 'on another data-parallel rank'}")

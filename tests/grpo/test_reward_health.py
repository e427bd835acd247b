"""Reward failure counts per step and the stop rule, decided on data-parallel totals; the CLI's one-line error."""
import pytest

from r1_megatron.grpo.reward_health import RewardFailure, RewardHealth
from r1_megatron.training.step_stats import StepStats
from r1_megatron.rewards.runner import RewardBatch


def batch(failure, errors=None):
    n = len(failure)
    return RewardBatch(total=[0.0] * n, per_reward={"r": [0.0] * n}, failure=list(failure), wall_s=0.0,
                       errors=list(errors or [None] * n))


def step(health, step_no, *batches):
    """One step on one rank: record its batches, reduce (no group: one rank), decide."""
    stats = StepStats()
    for b in batches:
        health.record(stats, b)
    metrics = stats.reduce(None)
    health.end_step(step_no, metrics)
    return metrics


def test_counts_per_kind_over_the_steps_batches():
    health = RewardHealth(max_failed_steps=3)
    m = step(health, 1, batch([None, "error", "timeout"]), batch(["crash", "error", None, None]))
    assert {k: m[k] for k in ("reward/samples", "reward/errors", "reward/timeouts", "reward/crashes")} == {
        "reward/samples": 7.0, "reward/errors": 2.0, "reward/timeouts": 1.0, "reward/crashes": 1.0}
    assert health.failed_steps == 0


def test_stops_on_the_nth_consecutive_all_failed_step_with_the_first_error():
    health = RewardHealth(max_failed_steps=2)
    step(health, 1, batch(["error", "error"], ["r: KeyError: 'tests'\nTraceback ...", "r: KeyError: 'tests'"]))
    step(health, 2, batch([None, "error"]))  # one sample scored: the streak ends
    assert health.failed_steps == 0
    step(health, 3, batch(["timeout", "error"], ["r: timed out after 10 s (the worker was killed)", "r: Boom"]))
    with pytest.raises(RewardFailure) as err:
        step(health, 4, batch(["crash", "crash"], ["r: the reward worker died (exit code -9)"] * 2))
    assert str(err.value) == ("rewards failed on every sample of steps 3-4 (0 errors, 0 timeouts, 2 crashes in "
                              "step 4; rewards.max_failed_steps=2); first failure: r: timed out after 10 s (the "
                              "worker was killed)")


def test_zero_never_stops_and_one_stops_at_once():
    never = RewardHealth(max_failed_steps=0)
    for i in range(1, 20):
        step(never, i, batch(["error"], ["r: ValueError: bad"]))
    assert never.failed_steps == 19
    with pytest.raises(RewardFailure, match=r"^rewards failed on every sample of step 1 \(1 errors,"):
        step(RewardHealth(max_failed_steps=1), 1, batch(["error"], ["r: ValueError: bad"]))


def test_the_decision_is_on_the_totals_over_data_parallel_ranks():
    """Rank 0's samples all failed, rank 1 scored one: no rank stops (a rank stopping alone would hang the
    others in the next collective). Totals are what StepStats.reduce sums over the data-parallel group."""
    ranks = [RewardHealth(max_failed_steps=1), RewardHealth(max_failed_steps=1)]
    stats = [StepStats(), StepStats()]
    ranks[0].record(stats[0], batch(["error", "error"], ["r: ValueError: bad"] * 2))
    ranks[1].record(stats[1], batch(["error", None]))
    local = [s.reduce(None) for s in stats]
    summed = {k: local[0][k] + local[1][k] for k in local[0]}  # = all_reduce(SUM) of the totals
    for health in ranks:
        health.end_step(1, summed)
        assert health.failed_steps == 0
    # ... and when every sample of every rank failed, both stop; a rank that holds no error text says so
    stats = [StepStats(), StepStats()]
    ranks[0].record(stats[0], batch(["error"], ["r: ValueError: bad"]))
    ranks[1].record(stats[1], batch([]))  # no prompts of its own this step
    summed = {k: stats[0].reduce(None)[k] + stats[1].reduce(None)[k] for k in local[0]}
    with pytest.raises(RewardFailure, match="first failure: r: ValueError: bad$"):
        ranks[0].end_step(2, summed)
    with pytest.raises(RewardFailure, match="first failure: on another data-parallel rank$"):
        ranks[1].end_step(2, summed)


def test_the_cli_prints_a_reward_failure_as_one_line(monkeypatch, capsys):
    from r1_megatron import cli
    from r1_megatron.training import run

    def broken_run(*args, **kwargs):
        raise RewardFailure("rewards failed on every sample of steps 1-3 (...); first failure: r: ValueError: bad")

    monkeypatch.setattr(run, "run_command", broken_run)
    assert cli.main(["train", "grpo"]) == 2
    err = capsys.readouterr().err
    assert err == ("r1-megatron train: error: rewards failed on every sample of steps 1-3 (...); first failure: r: "
                   "ValueError: bad\n")

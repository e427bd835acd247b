"""train_step's guarded update is Megatron's optimizer.step() on a finite step (bit for bit), skips an fp16
overflow as the loss scaler's business, and UpdateGuard counts skipped updates and stops a run after K steps."""
import math
import types

import pytest

from r1_megatron.training import step as step_module
from r1_megatron.training.losses import next_token_cross_entropy
from r1_megatron.training.step import guarded_update, train_step
from r1_megatron.training.update_guard import DivergenceStop, UpdateGuard
from tests.training.guard_fixtures import adam_state, batch, same, trainer, weights


def _megatron_step(ddp, optimizer, scheduler, micro_batches):
    """The reference: the schedule, then Megatron's own optimizer.step() (what train_step called before the guard)."""
    ddp.train()
    ddp.zero_grad_buffer()
    optimizer.zero_grad()
    step_module._run_schedule(ddp, micro_batches, next_token_cross_entropy, forward_only=False)
    updated, grad_norm, _ = optimizer.step()
    assert updated
    scheduler.step(increment=1)
    return grad_norm


@pytest.mark.parametrize("clip_grad, distributed", [(1e-3, False), (0.0, False), (1e-3, True)])
def test_a_finite_step_is_megatrons_own_step(clip_grad, distributed):
    # clip 1e-3: every step is clipped (the norms are ~1); 0: Megatron computes no norm, train_step still does
    ours, theirs = trainer(clip_grad=clip_grad, distributed_optimizer=distributed), \
        trainer(clip_grad=clip_grad, distributed_optimizer=distributed)
    for seed in (1, 2, 3):
        result = train_step(*ours, batch(ours[0], seed), next_token_cross_entropy)
        norm = _megatron_step(*theirs, batch(theirs[0], seed))
        assert result.updated and not result.nonfinite
        if clip_grad:
            assert result.grad_norm == pytest.approx(norm, rel=1e-6)
        assert result.grad_norm > 0 and math.isfinite(result.grad_norm)
    assert same(weights(ours[0]), weights(theirs[0]))
    assert same(adam_state(ours[1]), adam_state(theirs[1]))
    assert ours[1].param_groups[0]["lr"] == theirs[1].param_groups[0]["lr"] > 0


class _ScaledOptimizer:
    """What guarded_update sees of an fp16 optimizer: prepare_grads reports the loss scaler's overflow check."""

    def __init__(self, overflow: bool, grad_norm: float = 1.0):
        self.overflow, self.grad_norm, self.stepped = overflow, grad_norm, False
        self.config = types.SimpleNamespace(clip_grad=0.0, use_precision_aware_optimizer_no_fp8_or_ds_fp8=False)

    def prepare_grads(self):
        return self.overflow

    def get_grad_norm(self):
        assert not self.overflow, "Megatron computes no norm of overflowed gradients"
        return self.grad_norm

    def get_parameters(self):
        return []

    def step_with_ready_grads(self):
        self.stepped = True
        return True


@pytest.mark.parametrize("overflow, loss, grad_norm, want", [
    (True, 1.0, 1.0, (False, False, math.inf)),  # the scaler backs off: skipped, not a divergence
    (True, math.nan, 1.0, (False, True, math.inf)),  # a NaN loss is a divergence whatever the scaler says
    (False, 1.0, math.nan, (False, True, math.nan)),
    (False, math.inf, 1.0, (False, True, 1.0)),
    (False, 1.0, 2.0, (True, False, 2.0)),
])
def test_guarded_update_decisions(overflow, loss, grad_norm, want):
    optimizer = _ScaledOptimizer(overflow, grad_norm)
    got = guarded_update(optimizer, loss)
    assert got[:2] == want[:2] and (got[2] == want[2] or math.isnan(got[2]) and math.isnan(want[2]))
    assert optimizer.stepped == want[0]


def _result(nonfinite: bool, loss=math.nan, grad_norm=math.nan):
    return types.SimpleNamespace(nonfinite=nonfinite, loss=loss if nonfinite else 0.5, grad_norm=grad_norm)


def test_guard_counts_streaks_of_steps_and_stops_at_k():
    guard = UpdateGuard(max_consecutive_skips=2)
    guard.record(_result(False))
    assert guard.end_step(1) is None
    guard.record(_result(True))
    guard.record(_result(True, loss=2.0, grad_norm=math.inf))  # two skipped updates in one step: one step
    warning = guard.end_step(2)
    assert warning.startswith("warning: step 2: skipped 2 optimizer update(s) with a non-finite loss/gradient "
                              "(loss 2, grad norm inf); 1 step(s) in a row, the run stops at 2")
    guard.check(lambda: None)  # one step in a row: go on
    guard.record(_result(False))
    assert guard.end_step(3) is None and guard.consecutive_steps == 0  # a clean step ends the streak
    guard.record(_result(True))
    guard.end_step(4)
    guard.record(_result(False))
    guard.record(_result(True))  # a step with any skipped update counts
    guard.end_step(5)
    assert guard.skipped_updates == 4
    with pytest.raises(DivergenceStop) as stop:
        guard.check(lambda: "runs/x/checkpoints/step_00000003")
    assert str(stop.value) == ("stopped: 2 consecutive steps had a non-finite loss/gradient (last: step 5, loss nan, "
                               "grad norm nan; optimizer.max_consecutive_skips=2); the last good checkpoint is "
                               "runs/x/checkpoints/step_00000003")


def test_guard_state_survives_a_resume_and_zero_never_stops():
    guard = UpdateGuard(max_consecutive_skips=0)
    for step in range(1, 51):
        guard.record(_result(True))
        assert "no limit" in guard.end_step(step)
        guard.check(lambda: None)
    resumed = UpdateGuard(max_consecutive_skips=3)
    resumed.load_state_dict(guard.state_dict())
    assert (resumed.skipped_updates, resumed.consecutive_steps, resumed.last[0]) == (50, 50, 50)
    with pytest.raises(DivergenceStop, match="no checkpoint was written"):
        resumed.check(lambda: None)
    fresh = UpdateGuard(3)
    fresh.load_state_dict({})  # a checkpoint from before the guard
    assert (fresh.skipped_updates, fresh.consecutive_steps, fresh.last) == (0, 0, None)


def test_the_documented_knob_and_lines(tmp_path):
    from r1_megatron.run_config import load_run_config
    from r1_megatron.training.optimizer import OptimizerSettings
    from tests.doc_examples import doc_examples

    examples = doc_examples("launching.md")
    (tmp_path / "recipe.yaml").write_text(examples["guard-knob"])
    assert load_run_config(tmp_path / "recipe.yaml").optimizer.max_consecutive_skips == 3
    assert OptimizerSettings().max_consecutive_skips == 3  # the documented default
    guard = UpdateGuard(3)
    for step in (2, 3, 4):
        guard.record(_result(True))
        warning = guard.end_step(step)
        if step == 2:
            assert warning + "\n" == examples["skip-warning"]
    with pytest.raises(DivergenceStop) as stop:
        guard.check(lambda: "runs/x/checkpoints/step_00000002")
    assert f"r1-megatron train: error: {stop.value}\n" == examples["divergence-stop"]

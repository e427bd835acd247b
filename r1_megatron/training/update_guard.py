"""Counting the optimizer updates train_step skipped for a non-finite loss or gradient norm, and the stop for a run
that keeps diverging.

train_step never applies such an update (training/step.py), so one bad batch costs one update and the weights stay
finite; a run whose every update is NaN (a learning rate far too large, a broken loss) would otherwise go on
"training" on nothing until its last step. After `optimizer.max_consecutive_skips` steps in a row with a skipped
update the run stops and says which checkpoint to go back to.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from r1_megatron.training.run_stop import RunStopped

SKIPPED_METRIC = "train/skipped_updates"  # cumulative over the run


class DivergenceStop(RunStopped):
    """optimizer.max_consecutive_skips steps in a row had a non-finite loss or gradient norm."""


class UpdateResult(Protocol):  # training.step.StepResult
    loss: float
    grad_norm: float
    nonfinite: bool


class UpdateGuard:
    """`record(result)` for every train_step of a step, `end_step(step)` once after them. The loss, the norm and
    the skip decision are global (all ranks), so every rank counts the same and all stop together.
    Checkpointed with the run: the counts survive a resume."""

    def __init__(self, max_consecutive_skips: int):
        self.max_consecutive_skips = max_consecutive_skips  # 0: never stop
        self.skipped_updates = 0  # over the whole run
        self.consecutive_steps = 0  # steps in a row with at least one skipped update
        self.last: tuple[int, float, float] | None = None  # (step, loss, grad norm) of the latest skip
        self._in_step: list[tuple[float, float]] = []  # this step's skipped (loss, grad norm)

    def record(self, result: UpdateResult) -> None:
        if result.nonfinite:
            self._in_step.append((result.loss, result.grad_norm))

    def end_step(self, step: int) -> str | None:
        """Close step `step`: a warning line when it skipped updates, else None (the streak is over)."""
        skipped, self._in_step = self._in_step, []
        if not skipped:
            self.consecutive_steps = 0
            return None
        self.skipped_updates += len(skipped)
        self.consecutive_steps += 1
        loss, grad_norm = skipped[-1]
        self.last = (step, loss, grad_norm)
        limit = f"the run stops at {self.max_consecutive_skips}" if self.max_consecutive_skips else "no limit"
        return (f"warning: step {step}: skipped {len(skipped)} optimizer update(s) with a non-finite loss/gradient "
                f"(loss {loss:g}, grad norm {grad_norm:g}); {self.consecutive_steps} step(s) in a row, {limit} "
                "(optimizer.max_consecutive_skips)")

    def check(self, last_checkpoint: Callable[[], Path | None]) -> None:
        """Raises DivergenceStop once max_consecutive_skips steps in a row skipped updates, naming the checkpoint
        `last_checkpoint()` finds."""
        if not self.max_consecutive_skips or self.consecutive_steps < self.max_consecutive_skips:
            return
        step, loss, grad_norm = self.last
        found = last_checkpoint()
        kept = f"the last good checkpoint is {found}" if found else "no checkpoint was written"
        raise DivergenceStop(f"stopped: {self.consecutive_steps} consecutive steps had a non-finite loss/gradient "
                             f"(last: step {step}, loss {loss:g}, grad norm {grad_norm:g}; "
                             f"optimizer.max_consecutive_skips={self.max_consecutive_skips}); {kept}")

    def state_dict(self) -> dict:
        return {"skipped_updates": self.skipped_updates, "consecutive_steps": self.consecutive_steps,
                "last": self.last}

    def load_state_dict(self, state: dict) -> None:
        """{} (a checkpoint from before the guard existed): nothing skipped yet."""
        self.skipped_updates = state.get("skipped_updates", 0)
        self.consecutive_steps = state.get("consecutive_steps", 0)
        self.last = tuple(state["last"]) if state.get("last") else None

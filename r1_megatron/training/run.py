"""The lifecycle every command shares: `Run` sets a run up, checkpoints and resumes it, drives its loop and
finishes it; `run_command` is what `r1-megatron train <algorithm>` calls.

    run = Run(cfg, resume=...)                  # parallel state, seeds, run directory (config.yaml first)
    policy = run.build_policy()                  # model.path (HF) or model.preset, in Megatron DDP
    optimizer, scheduler = run.build_optimizer()
    run.track("data", dataset)                   # anything with state_dict()/load_state_dict(): checkpointed
    run.restore()                                # exact resume when a checkpoint exists
    with run.loop(total_steps) as loop:          # metrics, progress bar, SIGTERM, periodic checkpoints
        while loop.running():
            ...; run.step += 1
            loop.end_step(metrics)
    run.finish()                                 # final HF export and plots

A checkpoint holds the policy, the optimizer and LR schedule, the tracked components' states (each under its
name) and the tracked extra models (e.g. GRPO's reference); nothing is assembled by hand per command.

Divergence: train_step skips an update whose loss or gradient norm is not finite; the trainer hands each step's
results to `run.guard.record(result)`, the loop logs `train/skipped_updates`, warns, and stops the run after
`optimizer.max_consecutive_skips` such steps in a row (training/update_guard.py). Checkpoints refuse non-finite
weights and a full disk (training/checkpoint_safety.py).
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Callable, Protocol

import torch.distributed as dist
from megatron.core import parallel_state

from r1_megatron.atomic_file import write_text_atomically
from r1_megatron.models import save_hf
from r1_megatron.runtime import initialize_parallel, seed_everything
from r1_megatron.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from r1_megatron.training.metrics_log import MetricsLogger, read_metrics
from r1_megatron.training.optimizer import OptimizerSettings, build_optimizer, build_scheduler
from r1_megatron.training.preemption import stop_on_sigterm
from r1_megatron.training.progress import Progress
from r1_megatron.training.run_sections import RunConfig
from r1_megatron.training.step import build_ddp, unwrap
from r1_megatron.training.update_guard import SKIPPED_METRIC, UpdateGuard


class Stateful(Protocol):
    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class Run:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, command: str = "train"):
        """command: how the user resumes this run, for messages (e.g. "train grpo")."""
        self.cfg, self.command = cfg, command
        initialize_parallel(cfg.parallel)
        seed_everything(cfg.seed)
        self.rank = dist.get_rank()
        self.dp_rank = parallel_state.get_data_parallel_rank()
        self.dp_size = parallel_state.get_data_parallel_world_size()
        self.dp_group = parallel_state.get_data_parallel_group_gloo()
        self.run_dir = Path(cfg.run_dir)
        self.checkpoints = self.run_dir / "checkpoints"
        cfg.model.check_path()
        self.latest = self._prepare_run_dir(resume)
        self.resumed = self.latest is not None
        self.step = 0
        self.policy = self.optimizer = self.scheduler = None
        self.tokenizer_dir: str | None = None  # recorded in checkpoints and copied into the HF export
        self._components: dict[str, Stateful] = {}
        self._extra_models: dict[str, object] = {}
        self.guard = UpdateGuard(cfg.optimizer.max_consecutive_skips)  # record(train_step's result) per update
        self.track("update_guard", self.guard)

    # ------------------------------------------------------------------------------------------- building

    def build_policy(self):
        """The policy from model.path (HF weights) or model.preset, wrapped in Megatron DDP."""
        self.policy = build_ddp(self.cfg.model.build(), distributed_optimizer=self.cfg.optimizer.distributed_optimizer)
        return self.policy

    def build_optimizer(self, settings: OptimizerSettings | None = None, *, total_steps: int | None = None):
        """Megatron's optimizer and LR schedule for the policy (default settings: cfg.optimizer); a decay with
        decay_steps 0 runs over `total_steps`."""
        settings = settings or self.cfg.optimizer
        if total_steps is not None:
            settings = settings.for_run(total_steps)
        self.optimizer = build_optimizer(self.policy, settings)
        self.scheduler = build_scheduler(self.optimizer, settings)
        return self.optimizer, self.scheduler

    def track(self, name: str, component: Stateful) -> None:
        """Checkpoint `component`'s state_dict() under `name` and restore it on resume."""
        self._components[name] = component

    def track_model(self, name: str, model) -> None:
        """Checkpoint a second model (same layout rules as the policy) and restore it on resume."""
        self._extra_models[name] = model

    # ------------------------------------------------------------------------------------- checkpoints

    def save(self) -> Path:
        user_state = {name: c.state_dict() for name, c in self._components.items()}
        return save_checkpoint(self.checkpoints, self.step, self.policy, self.optimizer, self.scheduler,
                               user_state=user_state, extra_models=self._extra_models or None,
                               tokenizer_dir=self.tokenizer_dir)

    def restore(self) -> bool:
        """Load the latest checkpoint into everything built and tracked; False when starting from scratch."""
        if self.latest is None:
            return False
        info = load_checkpoint(self.latest, self.policy, self.optimizer, self.scheduler,
                               extra_models=self._extra_models or None)
        for name, component in self._components.items():
            component.load_state_dict(info.user_state.get(name, {}))
        self.step = info.step
        self.say(f"resumed from {self.latest} at step {self.step}")
        return True

    def checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint.every_steps
        return bool(every) and self.step % every == 0

    # ------------------------------------------------------------------------------------------- the loop

    @contextlib.contextmanager
    def loop(self, total_steps: int, checks: tuple[Callable[[int, dict], None], ...] = (), **progress_keys):
        """The training loop's frame: metrics file + TensorBoard, progress bar, SIGTERM → checkpoint and stop.
        `checks(step, metrics)` run after each step is logged (they may raise to stop the run on every rank);
        progress_keys: `keys`/`metric_names` of the progress line (training/progress.py)."""
        metrics = MetricsLogger(self.run_dir, tensorboard=self.cfg.logging.tensorboard,
                                resume_step=self.step if self.resumed else None, enabled=self.rank == 0)
        progress = Progress(total_steps, initial_step=self.step, enabled=self.cfg.logging.progress and self.rank == 0,
                            **progress_keys)
        with metrics, progress, stop_on_sigterm() as stop:  # progress: closed before an error prints
            yield Loop(self, total_steps, metrics, progress, stop, checks)

    def finish(self, total_steps: int) -> Path:
        """Export the final policy (every rank takes part) and plot the metrics (rank 0); a run stopped early
        (SIGTERM) does neither. Returns the run directory."""
        if self.step < total_steps:
            return self.run_dir
        if self.cfg.checkpoint.export_hf:  # collective: every rank sends its part of the model to rank 0
            save_hf(unwrap(self.policy), self.run_dir / "hf", tokenizer_dir=self.tokenizer_dir)
        if self.rank == 0:
            from r1_megatron.plotting import plot_run

            plot_run(self.run_dir)
        return self.run_dir

    # ------------------------------------------------------------------------------------------- set-up

    def _prepare_run_dir(self, resume: bool) -> Path | None:
        """The checkpoint to resume from (None: start from the beginning), after refusing what would lose work;
        then the run directory holds config.yaml before any long work starts (a run killed in its set-up can be
        resumed). A new run never reuses a directory with checkpoints or logged steps; --resume of a run with no
        checkpoint starts it over only when it had logged no step (nothing is lost)."""
        latest = latest_checkpoint(self.checkpoints)
        logged = _logged_steps(self.run_dir)
        if not resume and (latest is not None or logged):
            raise ValueError(f"run_dir {self.run_dir} already holds a run ({'checkpoints' if latest else 'metrics'})"
                             f": resume it with `--resume {self.run_dir}`, or set run_dir=... to start a new run")
        if resume and latest is None:
            if logged:
                raise ValueError(f"--resume {self.run_dir}: no checkpoint to resume from, and {logged} logged step(s) "
                                 "would be redone; start a new run (run_dir=...) or delete the directory")
            self.say(f"--resume {self.run_dir}: no checkpoint yet (stopped before its first step); starting over")
        if self.rank == 0:
            from r1_megatron.run_config import dump_run_config

            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text_atomically(self.run_dir / "config.yaml", dump_run_config(self.cfg))
        return latest

    def say(self, message: str) -> None:
        if self.rank == 0:
            print(message, flush=True)


class Loop:
    """One run's loop state: `running()` before each step, `end_step(metrics)` after it."""

    def __init__(self, run: Run, total_steps: int, metrics: MetricsLogger, progress: Progress, stop, checks):
        self.run, self.total_steps = run, total_steps
        self.metrics, self.progress, self.stop, self.checks = metrics, progress, stop, checks
        self.stopped = False

    def running(self) -> bool:
        return not self.stopped and self.run.step < self.total_steps

    def log_before_first_step(self, record: dict[str, float]) -> None:
        """Log metrics of the state before the first step (an evaluation of the initial policy) as step 0, unless
        a resumed run logged them already."""
        if self.metrics.last_step is None:
            self.metrics.log(0, record)

    def end_step(self, record: dict[str, float], samples: list[dict] | None = None) -> None:
        """Log step `run.step` (metrics.jsonl, TensorBoard, progress) with the skipped-update count, run the
        checks, stop a diverged run (before any checkpoint of this step), then checkpoint when due, at the end, or
        when any rank got SIGTERM (agreed by one collective, so all ranks stop after this step)."""
        run = self.run
        warning = run.guard.end_step(run.step)
        record = {**record, SKIPPED_METRIC: float(run.guard.skipped_updates)}
        self.metrics.log(run.step, record)
        if samples is not None:
            self.metrics.log_samples(run.step, samples)
        self.progress.update(run.step, record)
        if warning:
            run.say(warning)
        for check in self.checks:
            check(run.step, record)
        run.guard.check(lambda: latest_checkpoint(run.checkpoints))
        self.stopped = self.stop.agreed()
        if self.stopped or run.step == self.total_steps or run.checkpoint_due():
            run.save()
        if self.stopped:
            run.say(f"SIGTERM: checkpointed step {run.step} in {run.checkpoints}; resume with "
                    f"`r1-megatron {run.command} --resume {run.run_dir}`")


def _logged_steps(run_dir: Path) -> int:
    try:
        return len(read_metrics(run_dir))
    except FileNotFoundError:
        return 0


# ------------------------------------------------------------------------------------------- the command


def resolve_config(cls: type, recipe: str | None, resume: str | None, overrides: list[str]):
    """The run config: the recipe (default: the command's built-in one) + overrides, or, with --resume, the
    resumed run's own saved config.yaml + overrides."""
    from r1_megatron.run_config import load_run_config

    if resume is not None:
        saved = Path(resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {resume}: no config.yaml there (not a run directory)")
        return load_run_config(str(saved), overrides, cls=cls)
    return load_run_config(recipe, overrides, cls=cls)


def run_command(trainer_cls, config_cls: type, recipe: str | None, resume: str | None, overrides: list[str], *,
                print_config: bool = False) -> int:
    """Load the config, train with `trainer_cls(cfg, resume=...)`.train(), tear the process group down on every
    exit path, and say where the results are."""
    from r1_megatron.run_config import dump_run_config

    cfg = resolve_config(config_cls, recipe, resume, overrides)
    if print_config:  # a recipe to start from: `r1-megatron train grpo --print-config > my_recipe.yaml`
        print(dump_run_config(cfg), end="")
        return 0
    if resume is None:
        cfg.run_dir = cfg.run_dir.replace("{time}", time.strftime("%Y%m%d-%H%M%S"))
    started = time.perf_counter()
    try:
        trainer = trainer_cls(cfg, resume=resume is not None)
        run_dir = trainer.train()
    finally:  # every exit path, errors included: ranks must not wait on a peer that has left
        if dist.is_initialized():
            dist.destroy_process_group()
    if trainer.run.rank == 0:
        _print_summary(run_dir, trainer.run.step, trainer.total_steps, time.perf_counter() - started)
    return 0


def _print_summary(run_dir: Path, step: int, total: int, seconds: float) -> None:
    print(f"\nrun finished in {seconds:.0f} s (step {step}/{total})")
    print(f"  run directory: {run_dir}")
    print(f"  metrics:       {run_dir / 'metrics.jsonl'}  (TensorBoard: {run_dir / 'tensorboard'})")
    print(f"  plots:         {run_dir / 'plots' / 'summary.png'}")
    print(f"  checkpoints:   {run_dir / 'checkpoints'}")
    if (run_dir / "hf").is_dir():
        print(f"  HF model:      {run_dir / 'hf'}")
